"""The executor with the SQL store: parallel branches, retries on an injected clock, branches,
maps, joins, failure modes, approvals, cancellation, priorities and recovery after a crash."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from openautoglm.core.clock import ManualClock, SystemClock
from openautoglm.store.database import open_database
from openautoglm.store.workflows_sql import SqlWorkflowStore
from openautoglm.workflows.context import TaskContext, TaskFailure
from openautoglm.workflows.executor import Executor
from openautoglm.workflows.model import RunState, TaskRun, TaskState
from openautoglm.workflows.runners import TaskRunners
from openautoglm.workflows.service import WorkflowService

HERE = "tests.unit.workflows.test_executor"


async def nap(ctx: TaskContext, seconds: float = 0.2) -> dict[str, Any]:
    started = time.monotonic()
    await asyncio.sleep(seconds)
    return {"task": ctx.task_id, "start": started, "end": time.monotonic()}


def flaky(ctx: TaskContext, succeed_on: int = 3) -> dict[str, int]:
    ctx.log(f"trying attempt {ctx.attempt}")
    if ctx.attempt < succeed_on:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return {"attempt": ctx.attempt}


def double(ctx: TaskContext, value: int) -> int:
    return value * 2


def fail(ctx: TaskContext) -> None:
    raise TaskFailure("broken on purpose", "python", retryable=False)


def echo_key(ctx: TaskContext) -> str:
    return ctx.idempotency_key


async def service_for(tmp_path: Path, clock: Any = None, workers: int = 8) -> WorkflowService:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'wf.db'}")
    store = SqlWorkflowStore(engine)
    executor = Executor(store, TaskRunners(), clock or SystemClock(), workers=workers)
    executor.start()
    service = WorkflowService(store, executor, clock or SystemClock())
    service.engine = engine  # type: ignore[attr-defined]
    return service


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[WorkflowService]:
    made = await service_for(tmp_path)
    yield made
    await made.close()
    await made.engine.dispose()  # type: ignore[attr-defined]


def py(task_id: str, fn: str, depends: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "python",
        "callable": f"{HERE}:{fn}",
        "depends": depends or [],
        **extra,
    }


async def finish(service: WorkflowService, run_id: str) -> tuple[Any, dict[str, TaskRun]]:
    await service.executor.wait(run_id, timeout_s=20)
    run = await service.run(run_id)
    tasks = {task.task_id: task for task in await service.tasks(run_id)}
    return run, tasks


async def test_a_diamond_heavy_dag_runs_its_branches_in_parallel(service: WorkflowService) -> None:
    fan = ["b1", "b2", "b3"]
    wide = ["d1", "d2", "d3", "d4"]
    tasks = [py("a", "nap")]
    tasks += [py(b, "nap", ["a"]) for b in fan]
    tasks += [py("c", "nap", fan)]
    tasks += [py(d, "nap", ["c"]) for d in wide]
    tasks += [py("e", "nap", wide)]
    await service.apply({"name": "diamonds", "tasks": tasks}, "tester")
    started = time.monotonic()
    run = await service.start("diamonds", {}, trigger="manual")
    run, results = await finish(service, run.id)
    elapsed = time.monotonic() - started
    assert run.state is RunState.SUCCEEDED
    assert len(results) == 10
    out = {task_id: task.output for task_id, task in results.items()}

    def overlap(group: list[str]) -> bool:
        return max(out[t]["start"] for t in group) < min(out[t]["end"] for t in group)

    assert overlap(fan) and overlap(wide)
    for before, after in (("a", "b1"), ("b3", "c"), ("c", "d2"), ("d4", "e")):
        assert out[before]["end"] <= out[after]["start"]
    assert elapsed < 10 * 0.2 * 0.85  # five levels of 0.2 s, not ten tasks in a row


async def test_a_flaky_task_retries_with_a_fixed_delay_on_the_injected_clock(
    tmp_path: Path,
) -> None:
    clock = ManualClock(datetime(2026, 11, 25, tzinfo=UTC))
    service = await service_for(tmp_path, clock)
    try:
        retry = {"max_attempts": 3, "delay_s": 10, "backoff": "fixed"}
        await service.apply(
            {
                "name": "flaky",
                "tasks": [
                    py("f", "flaky", retry=retry),
                    py("never", "flaky", retry=retry, args={"succeed_on": 9}),
                ],
            },
            None,
        )
        run = await service.start("flaky", {}, trigger="manual")

        async def state_of(task_id: str, wanted: TaskState, attempts: int | None = None) -> TaskRun:
            for _ in range(500):
                task = {t.task_id: t for t in await service.tasks(run.id)}[task_id]
                if task.state is wanted and attempts in (None, task.attempts):
                    return task
                await asyncio.sleep(0.01)
            raise AssertionError(f"{task_id} never became {wanted} after {attempts} attempts")

        first = await state_of("f", TaskState.RETRYING, 1)
        assert first.error_class == "python" and "attempt 1 failed" in (first.error or "")
        assert first.next_attempt_at == clock.now() + timedelta(seconds=10)
        await state_of("never", TaskState.RETRYING, 1)
        clock.advance(9.9)
        await asyncio.sleep(0.1)
        assert (await state_of("f", TaskState.RETRYING)).attempts == 1  # not due yet
        clock.advance(0.1)
        await state_of("f", TaskState.RETRYING, 2)
        await state_of("never", TaskState.RETRYING, 2)
        clock.advance(10)
        done = await state_of("f", TaskState.SUCCEEDED, 3)
        assert done.output == {"attempt": 3}
        assert [line for line in done.logs if line.startswith("trying")] == [
            "trying attempt 1",
            "trying attempt 2",
            "trying attempt 3",
        ]
        assert any(line.startswith("attempt 2 failed (python)") for line in done.logs)
        stored = {t.task_id: t for t in await service.store.tasks(run.id)}["f"]
        assert stored.logs == done.logs
        never = await state_of("never", TaskState.FAILED, 3)  # three attempts, then no more
        assert "attempt 3 failed" in (never.error or "")
        final, _ = await finish(service, run.id)
        assert final.state is RunState.FAILED
    finally:
        await service.close()
        await service.engine.dispose()  # type: ignore[attr-defined]


async def test_branch_map_and_join(service: WorkflowService) -> None:
    await service.apply(
        {
            "name": "etl",
            "inputs": {"numbers": {"type": "array"}},
            "outputs": {
                "total": "{{ (tasks.transform.output if tasks.transform is defined else [])"
                " | sum }}"
            },
            "tasks": [
                {
                    "id": "route",
                    "type": "branch",
                    "cases": [{"when": "inputs.numbers | length > 2", "then": ["transform"]}],
                    "default": ["tiny"],
                },
                {
                    "id": "transform",
                    "type": "map",
                    "depends": ["route"],
                    "over": "{{ inputs.numbers }}",
                    "max_parallel": 2,
                    "task": {
                        "type": "python",
                        "callable": f"{HERE}:double",
                        "args": {"value": "{{ item }}"},
                    },
                },
                py("tiny", "nap", ["route"], args={"seconds": 0}),
                py("report", "echo_key", ["transform", "tiny"], trigger="none_failed"),
            ],
        },
        None,
    )
    run = await service.start("etl", {"numbers": [1, 2, 3, 4, 5]}, trigger="manual")
    run, tasks = await finish(service, run.id)
    assert run.state is RunState.SUCCEEDED, run.error
    assert tasks["transform"].output == [2, 4, 6, 8, 10]
    assert tasks["tiny"].state is TaskState.SKIPPED
    assert tasks["report"].output == f"{run.id}/report"
    assert run.outputs == {"total": 30}
    assert {f"transform[{i}]" for i in range(5)} <= set(tasks)

    small = await service.start("etl", {"numbers": [1]}, trigger="manual")
    small, tasks = await finish(service, small.id)
    assert small.state is RunState.SUCCEEDED
    assert (
        tasks["transform"].state is TaskState.SKIPPED and tasks["tiny"].state is TaskState.SUCCEEDED
    )


async def test_fail_run_cancels_the_rest_and_continue_lets_other_branches_finish(
    service: WorkflowService,
) -> None:
    await service.apply(
        {
            "name": "strict",
            "tasks": [
                py("bad", "fail"),
                py("slow", "nap", args={"seconds": 5}),
                py("after", "nap", ["bad"]),
            ],
        },
        None,
    )
    run, tasks = await finish(service, (await service.start("strict", {}, trigger="manual")).id)
    assert run.state is RunState.FAILED and "task bad failed: broken on purpose" in (
        run.error or ""
    )
    assert (
        tasks["slow"].state is TaskState.CANCELLED and tasks["after"].state is TaskState.CANCELLED
    )
    await service.apply(
        {
            "name": "lenient",
            "tasks": [
                py("bad", "fail", on_failure="continue"),
                py("other", "nap", args={"seconds": 0.05}),
                py("after", "nap", ["bad"]),
            ],
        },
        None,
    )
    run, tasks = await finish(service, (await service.start("lenient", {}, trigger="manual")).id)
    assert run.state is RunState.FAILED
    assert tasks["other"].state is TaskState.SUCCEEDED
    assert tasks["after"].state is TaskState.SKIPPED


async def test_approval_waits_for_a_person(service: WorkflowService) -> None:
    await service.apply(
        {
            "name": "gated",
            "tasks": [{"id": "ok", "type": "approval"}, py("ship", "echo_key", ["ok"])],
        },
        None,
    )
    run = await service.start("gated", {}, trigger="manual")
    for _ in range(200):
        if {t.task_id: t for t in await service.tasks(run.id)}["ok"].state is TaskState.WAITING:
            break
        await asyncio.sleep(0.01)
    await service.approve(run.id, "ok", True, "key_boss", "looks good")
    run, tasks = await finish(service, run.id)
    assert run.state is RunState.SUCCEEDED
    assert tasks["ok"].output == {"approved": True, "by": "key_boss", "comment": "looks good"}
    rejected = await service.start("gated", {}, trigger="manual")
    await asyncio.sleep(0.1)
    await service.approve(rejected.id, "ok", False, "key_boss", "no")
    rejected, tasks = await finish(service, rejected.id)
    assert rejected.state is RunState.FAILED and tasks["ship"].state is TaskState.CANCELLED


async def test_cancellation_stops_running_tasks(service: WorkflowService) -> None:
    await service.apply({"name": "long", "tasks": [py("wait", "nap", args={"seconds": 30})]}, None)
    run = await service.start("long", {}, trigger="manual")
    await asyncio.sleep(0.1)
    cancelled = await service.cancel(run.id)
    assert cancelled.state is RunState.CANCELLED
    stored = {t.task_id: t for t in await service.store.tasks(run.id)}
    assert stored["wait"].state is TaskState.CANCELLED
    assert (await service.store.get_run(run.id)).state is RunState.CANCELLED  # type: ignore[union-attr]


async def test_ready_tasks_are_dispatched_by_priority_then_deadline(tmp_path: Path) -> None:
    service = await service_for(tmp_path, workers=1)
    try:
        await service.apply(
            {"name": "one", "tasks": [py("t", "nap", args={"seconds": 0.05})]}, None
        )
        blocker = await service.start("one", {}, trigger="manual")
        low = await service.start("one", {}, trigger="manual", priority=9)
        late = await service.start(
            "one", {}, trigger="manual", priority=0, deadline=datetime(2030, 1, 1, tzinfo=UTC)
        )
        soon = await service.start(
            "one", {}, trigger="manual", priority=0, deadline=datetime(2029, 1, 1, tzinfo=UTC)
        )
        ends = {}
        for run in (blocker, low, late, soon):
            _, tasks = await finish(service, run.id)
            ends[run.id] = tasks["t"].output["start"]
        assert ends[soon.id] < ends[late.id] < ends[low.id]
    finally:
        await service.close()
        await service.engine.dispose()  # type: ignore[attr-defined]


async def test_a_run_interrupted_mid_flight_resumes_without_redoing_finished_tasks(
    tmp_path: Path,
) -> None:
    first = await service_for(tmp_path)
    await first.apply(
        {
            "name": "resume",
            "tasks": [
                py("one", "echo_key"),
                py("two", "nap", ["one"], args={"seconds": 30}),
                py("three", "echo_key", ["two"]),
            ],
        },
        None,
    )
    run = await first.start("resume", {}, trigger="manual")
    for _ in range(200):
        states = {t.task_id: t.state for t in await first.store.tasks(run.id)}
        if states["two"] is TaskState.RUNNING:
            break
        await asyncio.sleep(0.01)
    one_done = {t.task_id: t for t in await first.store.tasks(run.id)}["one"]
    await first.close()  # the process "dies" with two in flight
    await first.engine.dispose()  # type: ignore[attr-defined]

    second = await service_for(tmp_path)
    try:
        await second.apply(
            {
                "name": "resume",
                "tasks": [
                    py("one", "echo_key"),
                    py("two", "echo_key", ["one"]),
                    py("three", "echo_key", ["two"]),
                ],
            },
            None,
        )
        # the run keeps the version it started with (where two naps 30 s): check the resumed
        # state rather than wait for it
        assert await second.recover() == 1
        live = second.executor.live(run.id)
        assert live is not None
        assert live.tasks["one"] == one_done  # finished: never run again
        for _ in range(200):
            if live.tasks["two"].state is TaskState.RUNNING:
                break
            await asyncio.sleep(0.01)
        assert live.tasks["two"].state is TaskState.RUNNING  # in flight: running again
        assert live.tasks["two"].attempts == 2  # same idempotency key, one more attempt
        assert live.tasks["two"].idempotency_key == f"{run.id}/two"
    finally:
        await second.close()
        await second.engine.dispose()  # type: ignore[attr-defined]


async def test_retry_from_failed_keeps_what_succeeded(service: WorkflowService) -> None:
    await service.apply(
        {
            "name": "fixable",
            "tasks": [
                py("good", "echo_key"),
                py("bad", "fail", ["good"]),
                py("last", "echo_key", ["bad"]),
            ],
        },
        None,
    )
    run, tasks = await finish(service, (await service.start("fixable", {}, trigger="manual")).id)
    assert run.state is RunState.FAILED
    good = tasks["good"]
    await service.retry_from_failed(run.id)
    run, tasks = await finish(service, run.id)
    assert tasks["good"] == good  # not run again
    assert tasks["bad"].attempts == 1 and tasks["bad"].state is TaskState.FAILED


async def test_an_approval_without_a_decision_fails_after_its_timeout(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 25, tzinfo=UTC))
    service = await service_for(tmp_path, clock)
    try:
        await service.apply(
            {"name": "ask", "tasks": [{"id": "ok", "type": "approval", "timeout_s": 3600}]}, None
        )
        run = await service.start("ask", {}, trigger="manual")
        await asyncio.sleep(0.1)
        clock.advance(3599)
        await asyncio.sleep(0.1)
        assert (await service.run(run.id)).state is RunState.RUNNING
        clock.advance(1)
        run, tasks = await finish(service, run.id)
        assert run.state is RunState.FAILED
        assert tasks["ok"].error_class == "timeout" and "3600" in (tasks["ok"].error or "")
    finally:
        await service.close()
        await service.engine.dispose()  # type: ignore[attr-defined]


async def test_a_task_over_its_timeout_fails_with_the_timeout_class(
    service: WorkflowService,
) -> None:
    await service.apply(
        {"name": "slow", "tasks": [py("s", "nap", args={"seconds": 5}, timeout_s=0.2,
                                      retry={"max_attempts": 1})]},
        None,
    )  # fmt: skip
    run, tasks = await finish(service, (await service.start("slow", {}, trigger="manual")).id)
    assert run.state is RunState.FAILED
    assert tasks["s"].error_class == "timeout" and "0.2" in (tasks["s"].error or "")


def flaky_item(ctx: TaskContext, value: int) -> int:
    if value % 2 and ctx.attempt == 1:
        raise ConnectionError(f"item {value} failed once")
    return value


def fail_on(ctx: TaskContext, value: int, bad: int = 0) -> int:
    if value == bad:
        raise TaskFailure(f"item {value} is bad", "python", retryable=False)
    return value


def item_task(fn: str) -> dict[str, Any]:
    return {"type": "python", "callable": f"{HERE}:{fn}", "args": {"value": "{{ item }}"}}


def huge(ctx: TaskContext) -> int:
    return 2**70


async def test_a_map_whose_items_retry_finishes_with_every_item(service: WorkflowService) -> None:
    await service.apply(
        {
            "name": "retrying-map",
            "tasks": [
                {
                    "id": "m",
                    "type": "map",
                    "over": "{{ range(30) | list }}",
                    "max_parallel": 4,
                    "retry": {"max_attempts": 3, "delay_s": 0.05},
                    "task": item_task("flaky_item"),
                }
            ],
        },
        None,
    )  # fmt: skip
    run, tasks = await finish(
        service, (await service.start("retrying-map", {}, trigger="manual")).id
    )
    assert run.state is RunState.SUCCEEDED
    assert tasks["m"].output == list(range(30))
    assert {tasks[f"m[{i}]"].attempts for i in range(1, 30, 2)} == {2}


async def test_a_failing_map_under_continue_cancels_its_unstarted_items(
    service: WorkflowService,
) -> None:
    await service.apply(
        {
            "name": "map-continue",
            "tasks": [
                {
                    "id": "m", "type": "map", "over": "{{ [0, 1, 2, 3] }}", "max_parallel": 1,
                    "on_failure": "continue",
                    "task": item_task("fail_on"),
                },
                py("other", "echo_key"),
            ],
        },
        None,
    )  # fmt: skip
    run, tasks = await finish(
        service, (await service.start("map-continue", {}, trigger="manual")).id
    )
    assert run.state is RunState.FAILED and tasks["other"].state is TaskState.SUCCEEDED
    assert tasks["m"].state is TaskState.FAILED and "m[0]" in (tasks["m"].error or "")
    assert {tasks[f"m[{i}]"].state for i in (1, 2, 3)} == {TaskState.CANCELLED}


async def test_an_output_that_cannot_be_stored_fails_only_its_task(
    service: WorkflowService,
) -> None:
    await service.apply(
        {"name": "huge", "tasks": [py("big", "huge"), py("after", "echo_key", ["big"])]}, None
    )
    await service.apply({"name": "fine", "tasks": [py("ok", "echo_key")]}, None)
    huge_run = await service.start("huge", {}, trigger="manual")
    fine_run = await service.start("fine", {}, trigger="manual")
    huge_run, tasks = await finish(service, huge_run.id)
    assert huge_run.state is RunState.FAILED and "cannot be stored" in (tasks["big"].error or "")
    assert (await finish(service, fine_run.id))[0].state is RunState.SUCCEEDED


async def test_a_thousand_deep_chain_of_skips_does_not_recurse(service: WorkflowService) -> None:
    never = [{"when": "false", "then": ["s0"]}]
    chain: list[dict[str, Any]] = [{"id": "gate", "type": "branch", "cases": never, "default": []}]
    chain += [py(f"s{i}", "echo_key", ["gate" if i == 0 else f"s{i - 1}"]) for i in range(1500)]
    await service.apply({"name": "deep", "tasks": chain}, None)
    run, tasks = await finish(service, (await service.start("deep", {}, trigger="manual")).id)
    assert run.state is RunState.SUCCEEDED
    assert sum(task.state is TaskState.SKIPPED for task in tasks.values()) == 1500


async def test_a_cancelled_caller_does_not_break_a_group_commit(tmp_path: Path) -> None:
    from openautoglm.workflows.commits import GroupCommit

    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'gc.db'}")
    store = SqlWorkflowStore(engine)
    try:
        from openautoglm.workflows.model import Run

        run = Run("r", "wf", 1, RunState.RUNNING, {}, datetime(2026, 11, 25, tzinfo=UTC))
        await store.create_run(run, [TaskRun("r", t, TaskState.PENDING) for t in "abc"])
        commits = GroupCommit(store)
        first = asyncio.ensure_future(commits.apply(None, [TaskRun("r", "a", TaskState.SUCCEEDED)]))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(
            commits.apply(None, [TaskRun("r", "b", TaskState.SUCCEEDED)])
        )
        third = asyncio.ensure_future(commits.apply(None, [TaskRun("r", "c", TaskState.SUCCEEDED)]))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.wait_for(asyncio.gather(second, third), timeout=5)
        await commits.close()
        states = {t.task_id: t.state for t in await store.tasks("r")}
        assert states == dict.fromkeys("abc", TaskState.SUCCEEDED)  # the cancelled one too
    finally:
        await store.close()
        await engine.dispose()
