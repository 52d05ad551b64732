"""The ``autoglm`` command as a user runs it: a real process, a real port."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from tests.support.servers import free_port

from openautoglm.core.version import __version__

AUTOGLM = [sys.executable, "-m", "openautoglm.cli"]


def environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    env.update(AUTOGLM_DATA_DIR=str(data_dir), AUTOGLM_DEMO_MODELS="true", HF_HUB_OFFLINE="1")
    return env


def echo_config(tmp_path: Path) -> Path:
    path = tmp_path / "autoglm.yaml"
    path.write_text("models:\n  - {name: echo, backend: echo}\n", encoding="utf-8")
    return path


@contextmanager
def serving(data_dir: Path, config: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [*AUTOGLM, "serve", "--config", str(config), "--port", str(port)],
        env=environment(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"server did not start:\n{process.stdout.read() if process.stdout else ''}"
                )
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def run(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUTOGLM, *args], env=environment(data_dir), capture_output=True, text=True, timeout=60
    )


def test_version(tmp_path: Path) -> None:
    result = run(["version"], tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == __version__


def test_invalid_config_exits_2_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: m, backend: warp}]\n", encoding="utf-8")
    result = run(["serve", "--config", str(bad)], tmp_path)
    assert result.returncode == 2
    assert "models.0.backend" in result.stderr


def test_first_start_prints_admin_key_once_and_keys_survive_kill_9(tmp_path: Path) -> None:
    data_dir, config, port = tmp_path / "data", echo_config(tmp_path), free_port()
    with serving(data_dir, config, port) as process:
        key_file = data_dir / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        admin_key = key_file.read_text(encoding="utf-8").strip()
        headers = {"Authorization": f"Bearer {admin_key}"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=headers).status_code == 200
        created = run(
            ["keys", "create", "--role", "developer", "--models", "echo", "--config", str(config)],
            data_dir,
        )
        assert created.returncode == 0, created.stderr
        developer_key = created.stdout.strip()
        assert re.fullmatch(r"sk-agl-[A-Za-z0-9]{43}", developer_key)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/generate",
            json={"prompt": "hi there"},
            headers={"Authorization": f"Bearer {developer_key}"},
        )
        assert answer.status_code == 200 and answer.json()["text"] == "hi there"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        output = process.stdout.read() if process.stdout else ""
        assert output.count(admin_key) == 1
    with serving(data_dir, config, port) as second:
        for key in (admin_key, developer_key):
            response = httpx.get(
                f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
        assert "sk-agl-" not in (second.stdout.read() if second.stdout else "")
    listed = run(["keys", "list", "--config", str(config)], data_dir)
    assert listed.returncode == 0
    assert developer_key[:13] in listed.stdout and developer_key not in listed.stdout


def test_keys_create_for_unknown_tenant_fails_cleanly(tmp_path: Path) -> None:
    result = run(["keys", "create", "--tenant", "ghost"], tmp_path)
    assert result.returncode == 1
    assert "ghost" in result.stderr and "Traceback" not in result.stderr


def test_keys_carry_the_approve_models_permission(tmp_path: Path) -> None:
    data_dir, config = tmp_path / "data", echo_config(tmp_path)
    with_config = ["--tenant", "ml", "--config", str(config)]
    assert run(["tenants", "create", "ml", "--config", str(config)], data_dir).returncode == 0
    issued = run(
        ["keys", "create", "--role", "operator", "--permission", "approve_models", *with_config],
        data_dir,
    )
    assert issued.returncode == 0, issued.stderr
    assert "approve_models" in run(["keys", "list", *with_config], data_dir).stdout
    bad = run(["keys", "create", "--permission", "rule_everything", *with_config], data_dir)
    assert bad.returncode == 2 and "rule_everything" in bad.stderr


def test_tenants_and_key_lifecycle_from_the_cli(tmp_path: Path) -> None:
    data_dir, config = tmp_path / "data", echo_config(tmp_path)
    created = run(["tenants", "create", "sales", "--rpm", "60", "--config", str(config)], data_dir)
    assert created.returncode == 0, created.stderr
    listed = run(["tenants", "list", "--config", str(config)], data_dir)
    assert "sales" in listed.stdout and "requests_per_minute=60" in listed.stdout
    issued = run(["keys", "create", "--tenant", "sales", "--config", str(config)], data_dir)
    assert issued.returncode == 0, issued.stderr
    key_id = re.search(r"Created key (key_\w+)", issued.stderr)
    assert key_id is not None
    rotated = run(
        ["keys", "rotate", key_id.group(1), "--tenant", "sales", "--config", str(config)], data_dir
    )
    assert rotated.returncode == 0 and rotated.stdout.strip().startswith("sk-agl-")
    keys = run(["keys", "list", "--tenant", "sales", "--config", str(config)], data_dir).stdout
    assert keys.count("revoked") == 1 and keys.count("active") == 1
    again = run(
        ["keys", "revoke", key_id.group(1), "--tenant", "sales", "--config", str(config)], data_dir
    )
    assert again.returncode == 0
    wrong_tenant = run(
        ["keys", "revoke", key_id.group(1), "--tenant", "default", "--config", str(config)],
        data_dir,
    )
    assert wrong_tenant.returncode == 1 and "not found" in wrong_tenant.stderr
    disabled = run(["tenants", "update", "sales", "--disable", "--config", str(config)], data_dir)
    assert disabled.returncode == 0
    assert "disabled" in run(["tenants", "list", "--config", str(config)], data_dir).stdout
