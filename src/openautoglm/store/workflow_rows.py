"""Workflow runs and task runs to and from table rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, update

from openautoglm.store.tables import workflow_tasks
from openautoglm.store.times import aware, to_utc
from openautoglm.workflows.model import Run, RunState, TaskRun, TaskState


def json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else to_utc(moment)


def run_values(run: Run) -> dict[str, Any]:
    return {
        "workflow": run.workflow,
        "workflow_version": run.workflow_version,
        "state": run.state.value,
        "inputs": json_text(dict(run.inputs)),
        "outputs": None if run.outputs is None else json_text(dict(run.outputs)),
        "error": run.error,
        "priority": run.priority,
        "deadline": _utc(run.deadline),
        "trigger": run.trigger,
        "dedupe_key": run.dedupe_key,
        "created_by": run.created_by,
        "tenant_id": run.tenant_id,
        "created_at": to_utc(run.created_at),
        "started_at": _utc(run.started_at),
        "finished_at": _utc(run.finished_at),
    }


def run_from_row(row: Any) -> Run:
    return Run(
        id=row.id,
        workflow=row.workflow,
        workflow_version=row.workflow_version,
        state=RunState(row.state),
        inputs=orjson.loads(row.inputs),
        created_at=aware(row.created_at),
        priority=row.priority,
        deadline=aware(row.deadline),
        trigger=row.trigger,
        dedupe_key=row.dedupe_key,
        created_by=row.created_by,
        tenant_id=row.tenant_id,
        outputs=loads(row.outputs),
        error=row.error,
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
    )


def task_values(task: TaskRun) -> dict[str, Any]:
    return {
        "state": task.state.value,
        "attempts": task.attempts,
        "output": None if task.output is None else json_text(task.output),
        "error": task.error,
        "error_class": task.error_class,
        "started_at": _utc(task.started_at),
        "finished_at": _utc(task.finished_at),
        "next_attempt_at": _utc(task.next_attempt_at),
        "logs": json_text(list(task.logs)) if task.logs else None,
    }


def task_from_row(row: Any) -> TaskRun:
    return TaskRun(
        run_id=row.run_id,
        task_id=row.task_id,
        state=TaskState(row.state),
        attempts=row.attempts,
        output=loads(row.output),
        error=row.error,
        error_class=row.error_class,
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
        next_attempt_at=aware(row.next_attempt_at),
        logs=tuple(loads(row.logs) or ()),
    )


UPDATE_TASK = (
    update(workflow_tasks)
    .where(
        and_(
            workflow_tasks.c.run_id == bindparam("b_run_id"),
            workflow_tasks.c.task_id == bindparam("b_task_id"),
        )
    )
    .values({name: bindparam(name) for name in task_values(TaskRun("", "", TaskState.PENDING))})
)
