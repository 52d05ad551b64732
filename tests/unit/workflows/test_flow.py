"""Flow decisions without the executor: joins wait for every dependency (in any order, and
only once committed), trigger rules, and the run's end."""

from __future__ import annotations

from datetime import UTC, datetime

from openautoglm.workflows.definition import parse_workflow
from openautoglm.workflows.flow import Flow
from openautoglm.workflows.model import Run, RunState, TaskRun, TaskState

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def join_flow(width: int, trigger: str = "all_success") -> tuple[Flow, dict[str, TaskRun], Run]:
    tasks = [{"id": f"t{i}", "type": "python", "callable": "m:f"} for i in range(width)]
    tasks.append(
        {
            "id": "join",
            "type": "python",
            "callable": "m:f",
            "depends": [f"t{i}" for i in range(width)],
            "trigger": trigger,
        }
    )
    flow = Flow(parse_workflow({"name": "j", "tasks": tasks}))
    states = {t["id"]: TaskRun("r", t["id"], TaskState.PENDING) for t in tasks}
    return flow, states, Run("r", "j", 1, RunState.RUNNING, {}, NOW)


def finish(
    flow: Flow, tasks: dict[str, TaskRun], run: Run, task_id: str, state: TaskState
) -> list[str]:
    tasks[task_id] = TaskRun("r", task_id, state)
    return flow.propagate(run, tasks, [tasks[task_id]], NOW).ready


def test_a_wide_join_is_ready_only_after_its_last_dependency_in_any_order() -> None:
    flow, tasks, run = join_flow(500)
    order = [f"t{i}" for i in reversed(range(500))]
    for task_id in order[:-1]:
        assert finish(flow, tasks, run, task_id, TaskState.SUCCEEDED) == []
    assert finish(flow, tasks, run, order[-1], TaskState.SUCCEEDED) == ["join"]


def test_an_uncommitted_dependency_holds_the_join_until_it_is_committed() -> None:
    flow, tasks, run = join_flow(3)
    finish(flow, tasks, run, "t0", TaskState.SUCCEEDED)
    finish(flow, tasks, run, "t1", TaskState.SUCCEEDED)
    flow.uncommitted.add("t1")  # t1's success is still being written by another worker
    assert finish(flow, tasks, run, "t2", TaskState.SUCCEEDED) == []
    flow.uncommitted.discard("t1")
    assert flow.propagate(run, tasks, [], NOW, candidates=["join"]).ready == ["join"]


def test_trigger_rules_decide_a_join_after_a_failure() -> None:
    for trigger, expected in (("all_success", TaskState.SKIPPED), ("all_done", None)):
        flow, tasks, run = join_flow(2, trigger)
        finish(flow, tasks, run, "t0", TaskState.SUCCEEDED)
        tasks["t1"] = TaskRun("r", "t1", TaskState.FAILED)
        outcome = flow.propagate(run, tasks, [], NOW, candidates=["join"])
        if expected is None:
            assert outcome.ready == ["join"]
        else:
            assert tasks["join"].state is expected and outcome.ready == []
