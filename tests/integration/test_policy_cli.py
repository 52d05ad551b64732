"""``autoglm policies`` and ``autoglm audit`` as a user runs them, against the store."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
from tests.integration.test_cli import AUTOGLM, echo_config, environment, serving
from tests.support.servers import free_port

POLICY = """\
rules:
  - id: no-gambling
    type: words
    words: ["赌博"]
  - id: phones
    type: pii
    kinds: [mobile]
    action: mask
"""


def autoglm(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUTOGLM, *args],
        env=environment(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_apply_list_test_withdraw_and_audit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(POLICY, encoding="utf-8")
    bad.write_text(POLICY.replace("action: mask", "action: erase"), encoding="utf-8")

    refused = autoglm(data, "policies", "apply", str(bad))
    assert refused.returncode == 2
    assert "line 8" in refused.stderr and "action" in refused.stderr

    applied = autoglm(data, "policies", "apply", str(good), "--comment", "first")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "1"
    listed = autoglm(data, "policies", "list")
    assert "global" in listed.stdout and "first" in listed.stdout
    shown = autoglm(data, "policies", "show")
    assert shown.stdout == POLICY

    masked = autoglm(data, "policies", "test", "--text", "call 13812345678", "--stage", "output")
    assert masked.returncode == 0 and masked.stdout.strip() == "call 138****5678"
    blocked = autoglm(data, "policies", "test", "--text", "去 赌 博")
    assert blocked.returncode == 3 and "no-gambling" in blocked.stderr
    draft = autoglm(data, "policies", "test", str(good), "--text", "赌博")
    assert draft.returncode == 3

    assert autoglm(data, "policies", "withdraw").returncode == 0
    assert autoglm(data, "policies", "withdraw").returncode == 1  # nothing in force any more

    exported = autoglm(data, "audit", "export", "--format", "jsonl", "-o", str(tmp_path / "a"))
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(line) for line in (tmp_path / "a").read_text().splitlines()]
    assert [(e["action"], e["detail"]["version"]) for e in events] == [
        ("policy.applied", 1),
        ("policy.withdrawn", 2),
    ]
    assert all(e["endpoint"].startswith("CLI ") and e["key_id"] == "cli-operator" for e in events)
    verified = autoglm(data, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_audit_events_survive_kill_9_after_the_flush_window(tmp_path: Path) -> None:
    """Answered requests are in the store within flush_interval_s (0.2 s); kill -9 loses none
    of those, and the chain still verifies; a graceful stop writes everything."""
    data, config, port = tmp_path / "data", echo_config(tmp_path), free_port()
    with serving(data, config, port) as process:
        key = (data / "admin.key").read_text(encoding="utf-8").strip()
        headers = {"Authorization": f"Bearer {key}"}
        ids = []
        for index in range(30):
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/generate",
                json={"prompt": f"request {index}"},
                headers=headers,
            )
            assert response.status_code == 200
            ids.append(response.headers["x-request-id"])
        time.sleep(1.0)  # five flush windows
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    with serving(data, config, port) as second:
        for _ in range(5):
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/generate", json={"prompt": "x"}, headers=headers
            )
            ids.append(response.headers["x-request-id"])
        second.send_signal(signal.SIGTERM)  # graceful: the last five are written on the way out
        second.wait(timeout=20)
    out = tmp_path / "events.jsonl"
    exported = autoglm(data, "audit", "export", "--format", "jsonl", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    stored = {json.loads(line)["request_id"] for line in out.read_text().splitlines()}
    assert set(ids) <= stored
    verified = autoglm(data, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
