"""Durability of workflows through real `autoglm serve` processes killed with SIGKILL: a 50-task
run resumes and every task's side effect happens exactly once; 1,000 Redis stream messages with
a crash in the middle start exactly 1,000 runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("AUTOGLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def write_config(tmp_path: Path, port: int, workflows: dict[str, Any]) -> Path:
    config = tmp_path / "autoglm.yaml"
    document = {
        "server": {"host": "127.0.0.1", "port": port},
        "data_dir": str(tmp_path / "data"),
        "models": [{"name": "echo", "backend": "echo"}],
        "policy": {"enabled": False},
        "workflows": workflows,
    }
    config.write_text(json.dumps(document), encoding="utf-8")  # JSON is YAML
    return config


@contextmanager
def serving(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, "-m", "openautoglm.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def admin(tmp_path: Path, port: int) -> httpx.Client:
    key = (tmp_path / "data" / "admin.key").read_text().strip()
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def fifty_tasks(log: Path) -> dict[str, Any]:
    """Ten levels of five tasks, each level depending on the whole level before it."""
    tasks = []
    for level in range(10):
        for n in range(5):
            tasks.append(
                {
                    "id": f"l{level}_{n}",
                    "type": "python",
                    "callable": "tests.support.effects:effect",
                    "args": {"log": str(log), "seconds": 0.15},
                    "depends": [f"l{level - 1}_{m}" for m in range(5)] if level else [],
                }
            )
    return {"name": "fifty", "tasks": tasks}


def test_a_run_killed_mid_flight_resumes_and_each_effect_happens_once(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "effects.log"
    config = write_config(tmp_path, port, {"workers": 4})
    with serving(config, port) as server:
        with admin(tmp_path, port) as http:
            applied = http.post("/v1/workflows", json={"document": fifty_tasks(log)})
            assert applied.status_code == 201, applied.text
            run = http.post("/v1/workflows/fifty/runs", json={}).json()
        deadline = time.monotonic() + 30
        while not log.exists() or len(log.read_text().split()) < 18:
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)
        server.wait()
    done_before = len(log.read_text().split())
    assert done_before < 50

    with serving(config, port), admin(tmp_path, port) as http:
        deadline = time.monotonic() + 60
        while (state := http.get(f"/v1/runs/{run['id']}").json())["state"] != "succeeded":
            assert state["state"] in ("queued", "running"), state
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        tasks = state["tasks"]
    effects = log.read_text().split()
    assert len(effects) == 50 and len(set(effects)) == 50  # every effect exactly once
    assert set(effects) == {f"{run['id']}/l{lv}_{n}" for lv in range(10) for n in range(5)}
    executions = log.with_suffix(".executions").read_text().split()
    assert len(executions) - 50 <= 4  # only tasks in flight at the kill ran twice (4 workers)
    assert sum(task["attempts"] for task in tasks) == len(executions)


def redis_or_skip() -> Redis:
    client = Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except RedisConnectionError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return client


def test_a_thousand_stream_messages_with_a_crash_in_the_middle_start_a_thousand_runs(
    tmp_path: Path,
) -> None:
    redis = redis_or_skip()
    stream = f"autoglm-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    workflows = {
        "redis_streams": [
            {"stream": stream, "workflow": "ingest", "url": REDIS_URL, "claim_idle_ms": 300}
        ],
    }
    config = write_config(tmp_path, port, workflows)
    definition = {
        "name": "ingest",
        "inputs": {"n": {"type": "integer"}},
        "tasks": [
            {
                "id": "note",
                "type": "python",
                "callable": "tests.support.effects:noop",
                "args": {"n": "{{ inputs.n }}"},
            }
        ],
    }
    try:
        with serving(config, port) as server:
            with admin(tmp_path, port) as http:
                assert http.post("/v1/workflows", json={"document": definition}).status_code == 201
            pipe = redis.pipeline()
            for n in range(1000):
                pipe.xadd(stream, {"inputs": json.dumps({"n": n})})
            pipe.execute()
            deadline = time.monotonic() + 30
            with admin(tmp_path, port) as http:
                while len(http.get("/v1/runs", params={"limit": 1000}).json()["data"]) < 300:
                    assert time.monotonic() < deadline, "the consumer did not start runs"
                    time.sleep(0.05)
            server.send_signal(signal.SIGKILL)
            server.wait()
        with serving(config, port), admin(tmp_path, port) as http:
            deadline = time.monotonic() + 90
            while True:
                runs = http.get("/v1/runs", params={"limit": 1000}).json()["data"]
                pending = redis.xpending(stream, "autoglm")["pending"]
                if len(runs) >= 1000 and pending == 0:
                    break
                assert time.monotonic() < deadline, (len(runs), pending)
                time.sleep(0.2)
            assert sorted(run["inputs"]["n"] for run in runs) == list(range(1000))
            assert len({run["id"] for run in runs}) == 1000
            assert len(http.get("/v1/runs", params={"limit": 1000}).json()["data"]) == 1000
    finally:
        redis.delete(stream, f"{stream}:dead")
        redis.close()
