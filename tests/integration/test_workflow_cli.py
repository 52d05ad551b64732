"""``autoglm workflows`` / ``autoglm runs`` and the SDK's run methods against one real server.

The workflows run real ``python`` tasks (``tests.support.workflow_tasks``, imported by the
server) and an ``llm`` task on the echo model, so every output below is computed, not faked.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import settings_for
from tests.support.registry import http_client
from tests.support.servers import RunningServer, start_server, wait_until
from typer.testing import CliRunner, Result

from openautoglm.cli.main import app
from openautoglm.config.settings import ModelConfig
from openautoglm.sdk import (
    APITimeoutError,
    AsyncGLMClient,
    ConflictError,
    GLMClient,
    NotFoundError,
)

TASKS = "tests.support.workflow_tasks"
DEMO = f"""
name: cli-demo
description: add, greet, then ask the echo model
inputs:
  a: {{type: integer}}
  b: {{type: integer, default: 2}}
  name: {{type: string, default: world}}
outputs:
  sum: "{{{{ tasks.add.output }}}}"
  reply: "{{{{ tasks.ask.output.text }}}}"
tasks:
  - {{id: add, type: python, callable: "{TASKS}:add",
     args: {{a: "{{{{ inputs.a }}}}", b: "{{{{ inputs.b }}}}"}}}}
  - {{id: greet, type: python, depends: add, callable: "{TASKS}:greet",
     args: {{name: "{{{{ inputs.name }}}}"}}}}
  - {{id: ask, type: llm, depends: [add, greet], model: echo,
     prompt: "{{{{ tasks.greet.output }}}} sum={{{{ tasks.add.output }}}}"}}
"""
FAILS = f"""
name: cli-fails
tasks:
  - {{id: first, type: python, callable: "{TASKS}:add", args: {{a: 1, b: 2}}}}
  - {{id: boom, type: python, depends: first, callable: "{TASKS}:fail",
     retry: {{max_attempts: 1}}}}
"""
APPROVAL = f"""
name: cli-approval
outputs: {{shipped: "{{{{ tasks.ship.output }}}}"}}
tasks:
  - {{id: prepare, type: python, callable: "{TASKS}:greet", args: {{name: release}}}}
  - {{id: signoff, type: approval, depends: prepare, message: "ship it?"}}
  - {{id: ship, type: python, depends: signoff, callable: "{TASKS}:add", args: {{a: 40, b: 2}}}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = settings_for(
        tmp_path_factory.mktemp("workflow-cli"), [ModelConfig(name="echo", backend="echo")]
    )
    running = start_server(settings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def files(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three definitions written to files and applied (version 1 each)."""
    folder = tmp_path_factory.mktemp("definitions")
    paths = {}
    for name, text in (("cli-demo", DEMO), ("cli-fails", FAILS), ("cli-approval", APPROVAL)):
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(text, encoding="utf-8")
        applied = autoglm(server, "workflows", "apply", str(paths[name]))
        assert applied.exit_code == 0, applied.output
    return paths


def autoglm(server: RunningServer, *args: str) -> Result:
    """Run the CLI in-process against ``server`` with the admin key."""
    options = ["--url", server.base_url, "--api-key", server.admin_key]
    return CliRunner().invoke(app, [*args, *options], env={"COLUMNS": "200"})


def run_of(server: RunningServer, run_id: str) -> dict[str, Any]:
    with http_client(server, server.admin_key) as http:
        response = http.get(f"/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run


def tasks_of(server: RunningServer, run_id: str) -> dict[str, dict[str, Any]]:
    return {task["task_id"]: task for task in run_of(server, run_id)["tasks"]}


def start_waiting_for_approval(server: RunningServer) -> str:
    started = autoglm(server, "workflows", "run", "cli-approval")
    assert started.exit_code == 0, started.output
    run_id = started.stdout.strip()
    waiting = wait_until(lambda: tasks_of(server, run_id)["signoff"]["state"] == "waiting")
    assert waiting, tasks_of(server, run_id)
    return run_id


def test_apply_list_and_show(server: RunningServer, files: dict[str, Path]) -> None:
    again = autoglm(server, "workflows", "apply", str(files["cli-demo"]))
    assert again.exit_code == 0, again.output
    assert "Applied workflow cli-demo version 1 (3 tasks)" in again.stdout  # unchanged: still 1

    changed = files["cli-demo"].with_name("changed.yaml")
    changed.write_text(DEMO.replace("then ask", "and then ask"), encoding="utf-8")
    renamed = changed.read_text().replace("name: cli-demo", "name: cli-versions", 1)
    changed.write_text(renamed, encoding="utf-8")
    assert "version 1" in autoglm(server, "workflows", "apply", str(changed)).stdout
    changed.write_text(renamed.replace("and then ask", "then ask"), encoding="utf-8")
    assert "version 2" in autoglm(server, "workflows", "apply", str(changed)).stdout

    listed = autoglm(server, "workflows", "list")
    assert listed.exit_code == 0, listed.output
    for name in ("cli-demo", "cli-fails", "cli-approval", "cli-versions"):
        assert name in listed.stdout

    shown = autoglm(server, "workflows", "show", "cli-demo")
    assert shown.exit_code == 0, shown.output
    rows = {line.split("│")[1].strip(): line for line in shown.stdout.splitlines() if "│" in line}
    assert set(rows) >= {"add", "greet", "ask"}
    assert "llm" in rows["ask"] and "add, greet" in rows["ask"] and "fail_run" in rows["ask"]
    assert "3 attempts, 10 s fixed" in rows["add"]
    fails = autoglm(server, "workflows", "show", "cli-fails")
    assert "no retry" in fails.stdout

    old = autoglm(server, "workflows", "show", "cli-versions", "--version", "1")
    assert old.exit_code == 0 and "and then ask" in old.stdout
    missing = autoglm(server, "workflows", "show", "cli-versions", "--version", "9")
    assert missing.exit_code == 1
    assert "workflow 'cli-versions' version 9 not found" in missing.output


def test_graph_formats(server: RunningServer, files: dict[str, Path], tmp_path: Path) -> None:
    mermaid = autoglm(server, "workflows", "graph", "cli-demo")
    assert mermaid.exit_code == 0, mermaid.output
    assert mermaid.stdout.startswith("flowchart TD")
    for node in ("add<br/>python", "greet<br/>python", "ask<br/>llm"):
        assert node in mermaid.stdout
    for edge in ("t0 --> t1", "t0 --> t2", "t1 --> t2"):
        assert edge in mermaid.stdout

    dot = tmp_path / "demo.dot"
    written = autoglm(server, "workflows", "graph", "cli-demo", "--format", "dot", "-o", str(dot))
    assert written.exit_code == 0, written.output
    assert '"add" -> "greet";' in dot.read_text() and '"greet" -> "ask";' in dot.read_text()

    svg = tmp_path / "demo.svg"
    drawn = autoglm(server, "workflows", "graph", "cli-demo", "--format", "svg", "-o", str(svg))
    if shutil.which("dot") is None:
        assert drawn.exit_code == 1
        assert "SVG needs Graphviz" in drawn.output and not svg.exists()
    else:
        assert drawn.exit_code == 0, drawn.output
        assert "<svg" in svg.read_text()


def test_run_wait_prints_outputs_then_show_and_list(
    server: RunningServer, files: dict[str, Path], tmp_path: Path
) -> None:
    waited = autoglm(
        server, "workflows", "run", "cli-demo", "--input", "a=40", "--input", "name=007", "--wait"
    )
    assert waited.exit_code == 0, waited.output
    run_id = waited.stdout.splitlines()[0]
    assert run_id.startswith("run")
    assert "hello 007 sum=42" in waited.stdout  # name stays the string "007", a is the number 40
    assert f"run {run_id} succeeded" in waited.stdout

    shown = autoglm(server, "runs", "show", run_id)
    assert shown.exit_code == 0, shown.output
    for task in ("add", "greet", "ask"):
        assert f"{run_id}/{task}" in shown.stdout  # idempotency keys
    assert "succeeded" in shown.stdout and "42" in shown.stdout

    graph = autoglm(server, "workflows", "graph", "cli-demo", "--run", run_id)
    assert "add<br/>python<br/>succeeded" in graph.stdout and "classDef succeeded" in graph.stdout

    inputs = tmp_path / "inputs.json"
    inputs.write_text('{"a": 1, "b": 5}', encoding="utf-8")
    options = ("--inputs-file", str(inputs), "--priority", "1", "--deadline", "10m")
    from_file = autoglm(server, "workflows", "run", "cli-demo", *options)
    assert from_file.exit_code == 0, from_file.output
    second = from_file.stdout.strip()
    assert wait_until(lambda: run_of(server, second)["state"] == "succeeded")
    finished = run_of(server, second)
    assert finished["outputs"]["sum"] == 6 and finished["priority"] == 1
    assert finished["deadline"] is not None

    listed = autoglm(server, "runs", "list", "--workflow", "cli-demo", "--state", "succeeded")
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.stdout and second in listed.stdout
    assert run_id not in autoglm(server, "runs", "list", "--workflow", "cli-fails").stdout
    refused = autoglm(server, "runs", "retry", run_id, "--from-failed")
    assert refused.exit_code == 1 and "only failed or cancelled runs" in refused.output


def test_failed_run_exits_1_and_retry_keeps_what_succeeded(
    server: RunningServer, files: dict[str, Path]
) -> None:
    failed = autoglm(server, "workflows", "run", "cli-fails", "--wait")
    assert failed.exit_code == 1, failed.output
    run_id = failed.stdout.splitlines()[0]
    assert f"run {run_id} failed" in failed.stdout
    assert "RuntimeError: deliberate failure" in failed.stdout

    shown = autoglm(server, "runs", "show", run_id)
    assert "python: tests.support.workflow_tasks:fail raised RuntimeError" in shown.stdout

    without_flag = autoglm(server, "runs", "retry", run_id)
    assert without_flag.exit_code == 2 and "--from-failed" in without_flag.output

    retried = autoglm(server, "runs", "retry", run_id, "--from-failed", "--wait")
    assert retried.exit_code == 1, retried.output  # the same deterministic failure
    assert f"run {run_id} failed" in retried.stdout
    tasks = tasks_of(server, run_id)
    assert tasks["first"]["state"] == "succeeded" and tasks["first"]["attempts"] == 1
    assert tasks["boom"]["state"] == "failed" and tasks["boom"]["attempts"] == 1


def test_cancel_a_run_waiting_for_approval(server: RunningServer, files: dict[str, Path]) -> None:
    run_id = start_waiting_for_approval(server)
    watched = autoglm(server, "runs", "watch", run_id, "--timeout", "1")
    assert watched.exit_code == 2 and "still running" in watched.output

    cancelled = autoglm(server, "runs", "cancel", run_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert f"Run {run_id} is now cancelled" in cancelled.output
    tasks = tasks_of(server, run_id)
    assert tasks["signoff"]["state"] == "cancelled" and tasks["ship"]["state"] == "cancelled"
    assert tasks["prepare"]["state"] == "succeeded"

    again = autoglm(server, "runs", "cancel", run_id)
    assert again.exit_code == 1 and "already cancelled" in again.output


def test_approve_and_reject(server: RunningServer, files: dict[str, Path]) -> None:
    run_id = start_waiting_for_approval(server)
    approved = autoglm(server, "runs", "approve", run_id, "signoff", "--comment", "ship it")
    assert approved.exit_code == 0, approved.output
    assert "approved (succeeded)" in approved.output
    watched = autoglm(server, "runs", "watch", run_id)
    assert watched.exit_code == 0, watched.output
    assert "shipped" in watched.stdout and "42" in watched.stdout
    decision = tasks_of(server, run_id)["signoff"]["output"]
    assert decision["approved"] is True and decision["comment"] == "ship it"
    twice = autoglm(server, "runs", "approve", run_id, "signoff")
    assert twice.exit_code == 1 and "not waiting for an approval" in twice.output

    rejected_id = start_waiting_for_approval(server)
    rejected = autoglm(server, "runs", "approve", rejected_id, "signoff", "--reject")
    assert rejected.exit_code == 0 and "rejected (failed)" in rejected.output
    watched = autoglm(server, "runs", "watch", rejected_id)
    assert watched.exit_code == 1 and "rejected by" in watched.stdout


def test_unknown_workflow_and_run(server: RunningServer, files: dict[str, Path]) -> None:
    unknown = autoglm(server, "workflows", "run", "no-such-flow", "--wait")
    assert unknown.exit_code == 1
    assert "workflow 'no-such-flow' not found (workflow_not_found)" in unknown.output
    bad_input = autoglm(server, "workflows", "run", "cli-demo", "--input", "zzz=1")
    assert bad_input.exit_code == 1 and "unknown input 'zzz'" in bad_input.output
    no_run = autoglm(server, "runs", "show", "run_missing")
    assert no_run.exit_code == 1 and "run 'run_missing' not found" in no_run.output
    no_key = CliRunner().invoke(app, ["runs", "list", "--url", server.base_url], env={})
    assert no_key.exit_code == 2


def test_sdk_start_wait_get_and_cancel(server: RunningServer, files: dict[str, Path]) -> None:
    with GLMClient(api_key=server.admin_key, base_url=server.base_url) as client:
        started = client.start_run("cli-demo", {"a": 2, "b": 3}, priority=2, dedupe_key="sdk-1")
        assert started["state"] in ("queued", "running") and started["priority"] == 2
        assert client.start_run("cli-demo", {"a": 2}, dedupe_key="sdk-1")["id"] == started["id"]
        done = client.wait_run(started["id"], timeout_s=30, poll_s=0.05)
        assert done["state"] == "succeeded" and done["outputs"]["sum"] == 5
        fetched = client.get_run(started["id"])
        assert [t["task_id"] for t in fetched["tasks"]] == ["add", "greet", "ask"]
        assert fetched["outputs"]["reply"] == "hello world sum=5"

        waiting = client.start_run("cli-approval")
        with pytest.raises(APITimeoutError, match="still running"):
            client.wait_run(waiting["id"], timeout_s=0.3, poll_s=0.05)
        assert client.cancel_run(waiting["id"])["state"] == "cancelled"
        with pytest.raises(ConflictError):
            client.cancel_run(waiting["id"])
        with pytest.raises(NotFoundError):
            client.start_run("no-such-flow")
        with pytest.raises(NotFoundError):
            client.get_run("run_missing")


async def test_async_sdk_runs(server: RunningServer, files: dict[str, Path]) -> None:
    async with AsyncGLMClient(api_key=server.admin_key, base_url=server.base_url) as client:
        started = await client.start_run("cli-demo", {"a": 7}, deadline_s=60)
        done = await client.wait_run(started["id"], timeout_s=30, poll_s=0.05)
        assert done["state"] == "succeeded" and done["outputs"]["sum"] == 9
        assert (await client.get_run(started["id"]))["deadline"] is not None
