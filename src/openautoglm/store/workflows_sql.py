"""Workflow definitions, runs and task runs in the relational store.

The executor writes every state change through :meth:`SqlWorkflowStore.apply` — a run's row and
any number of task rows in one transaction — before it acts on it. ``create_run`` is idempotent
by ``dedupe_key`` (a unique column): a trigger that delivers the same event twice gets the run
the first delivery created.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openautoglm.store.database import shielded, write_transaction, writer_lock
from openautoglm.store.tables import (
    workflow_definitions,
    workflow_runs,
    workflow_schedules,
    workflow_tasks,
)
from openautoglm.store.times import aware, to_utc
from openautoglm.workflows.model import Run, RunState, TaskRun, TaskState


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else to_utc(moment)


def _run_values(run: Run) -> dict[str, Any]:
    return {
        "workflow": run.workflow,
        "workflow_version": run.workflow_version,
        "state": run.state.value,
        "inputs": _json(dict(run.inputs)),
        "outputs": None if run.outputs is None else _json(dict(run.outputs)),
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


def _run(row: Any) -> Run:
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
        outputs=_loads(row.outputs),
        error=row.error,
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
    )


def _task_values(task: TaskRun) -> dict[str, Any]:
    return {
        "state": task.state.value,
        "attempts": task.attempts,
        "output": None if task.output is None else _json(task.output),
        "error": task.error,
        "error_class": task.error_class,
        "started_at": _utc(task.started_at),
        "finished_at": _utc(task.finished_at),
        "next_attempt_at": _utc(task.next_attempt_at),
        "logs": _json(list(task.logs)) if task.logs else None,
    }


def _task(row: Any) -> TaskRun:
    return TaskRun(
        run_id=row.run_id,
        task_id=row.task_id,
        state=TaskState(row.state),
        attempts=row.attempts,
        output=_loads(row.output),
        error=row.error,
        error_class=row.error_class,
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
        next_attempt_at=aware(row.next_attempt_at),
        logs=tuple(_loads(row.logs) or ()),
    )


_UPDATE_TASK = (
    update(workflow_tasks)
    .where(
        and_(
            workflow_tasks.c.run_id == bindparam("b_run_id"),
            workflow_tasks.c.task_id == bindparam("b_task_id"),
        )
    )
    .values({name: bindparam(name) for name in _task_values(TaskRun("", "", TaskState.PENDING))})
)


class SqlWorkflowStore:
    """``WorkflowStore`` on SQLAlchemy Core, and the cron scheduler's state."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer: AsyncConnection | None = None

    # definitions

    @shielded
    async def save_definition(
        self, name: str, document: Mapping[str, Any], actor: str | None
    ) -> int:
        async with write_transaction(self._engine) as connection:
            latest = await connection.scalar(
                select(func.max(workflow_definitions.c.version)).where(
                    workflow_definitions.c.name == name
                )
            )
            version = (latest or 0) + 1
            await connection.execute(
                insert(workflow_definitions).values(
                    name=name,
                    version=version,
                    document=_json(dict(document)),
                    created_at=to_utc(datetime.now().astimezone()),
                    created_by=actor,
                )
            )
        return version

    async def definition(
        self, name: str, version: int | None = None
    ) -> tuple[int, Mapping[str, Any]] | None:
        query = select(workflow_definitions).where(workflow_definitions.c.name == name)
        if version is not None:
            query = query.where(workflow_definitions.c.version == version)
        query = query.order_by(workflow_definitions.c.version.desc()).limit(1)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else (row.version, orjson.loads(row.document))

    async def definitions(self) -> list[tuple[str, int, datetime]]:
        latest = (
            select(
                workflow_definitions.c.name,
                func.max(workflow_definitions.c.version).label("version"),
                func.max(workflow_definitions.c.created_at).label("updated_at"),
            )
            .group_by(workflow_definitions.c.name)
            .order_by(workflow_definitions.c.name)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(latest)).all()
        return [(row.name, row.version, aware(row.updated_at)) for row in rows]

    # runs

    @shielded
    async def create_run(self, run: Run, tasks: Sequence[TaskRun]) -> Run:
        try:
            async with write_transaction(self._engine) as connection:
                await connection.execute(
                    insert(workflow_runs).values(id=run.id, **_run_values(run))
                )
                if tasks:
                    await connection.execute(
                        insert(workflow_tasks),
                        [
                            {"run_id": t.run_id, "task_id": t.task_id, **_task_values(t)}
                            for t in tasks
                        ],
                    )
        except IntegrityError:
            if run.dedupe_key is None:
                raise
            existing = await self._run_where(workflow_runs.c.dedupe_key == run.dedupe_key)
            if existing is None:
                raise
            return existing
        return run

    async def apply(
        self,
        run: Run | None = None,
        tasks: Sequence[TaskRun] = (),
        new_tasks: Sequence[TaskRun] = (),
    ) -> None:
        await self.apply_many([run] if run is not None else [], tasks, new_tasks)

    @shielded
    async def apply_many(
        self, runs: Sequence[Run], tasks: Sequence[TaskRun], new_tasks: Sequence[TaskRun]
    ) -> None:
        """Several runs' and tasks' changes in one transaction (new task runs first).

        The executor writes several times per task, so these transactions run on one held
        connection (no pool checkout and reset each time); a broken one is replaced once."""
        gate = writer_lock(self._engine)
        async with gate if gate is not None else contextlib.nullcontext():
            try:
                await self._write(runs, tasks, new_tasks)
            except (DBAPIError, OSError):
                await self._drop_writer()
                await self._write(runs, tasks, new_tasks)

    async def _write(
        self, runs: Sequence[Run], tasks: Sequence[TaskRun], new_tasks: Sequence[TaskRun]
    ) -> None:
        if self._writer is None:
            self._writer = await self._engine.connect()
        connection = self._writer
        async with connection.begin():
            for run in runs:
                await connection.execute(
                    update(workflow_runs)
                    .where(workflow_runs.c.id == run.id)
                    .values(**_run_values(run))
                )
            if new_tasks:
                await connection.execute(
                    insert(workflow_tasks),
                    [
                        {"run_id": t.run_id, "task_id": t.task_id, **_task_values(t)}
                        for t in new_tasks
                    ],
                )
            if tasks:
                await connection.execute(
                    _UPDATE_TASK,
                    [
                        {"b_run_id": t.run_id, "b_task_id": t.task_id, **_task_values(t)}
                        for t in tasks
                    ],
                )

    async def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.close()

    async def close(self) -> None:
        """Give the held connection back (before the engine is disposed)."""
        await self._drop_writer()

    async def get_run(self, run_id: str) -> Run | None:
        return await self._run_where(workflow_runs.c.id == run_id)

    async def _run_where(self, condition: Any) -> Run | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(workflow_runs).where(condition))).first()
        return None if row is None else _run(row)

    async def tasks(self, run_id: str) -> list[TaskRun]:
        query = select(workflow_tasks).where(workflow_tasks.c.run_id == run_id)
        async with self._engine.connect() as connection:
            return [_task(row) for row in await connection.execute(query)]

    async def runs(
        self, workflow: str | None = None, state: RunState | None = None, limit: int = 100
    ) -> list[Run]:
        query = select(workflow_runs)
        if workflow is not None:
            query = query.where(workflow_runs.c.workflow == workflow)
        if state is not None:
            query = query.where(workflow_runs.c.state == state.value)
        query = query.order_by(workflow_runs.c.created_at.desc(), workflow_runs.c.id).limit(limit)
        async with self._engine.connect() as connection:
            return [_run(row) for row in await connection.execute(query)]

    async def unfinished_runs(self) -> list[Run]:
        query = (
            select(workflow_runs)
            .where(workflow_runs.c.state.in_((RunState.QUEUED.value, RunState.RUNNING.value)))
            .order_by(workflow_runs.c.created_at)
        )
        async with self._engine.connect() as connection:
            return [_run(row) for row in await connection.execute(query)]

    # the cron scheduler's state

    async def last_fire(self, name: str) -> datetime | None:
        query = select(workflow_schedules.c.last_fire_at).where(workflow_schedules.c.name == name)
        async with self._engine.connect() as connection:
            return aware(await connection.scalar(query))

    @shielded
    async def record_fire(self, name: str, at: datetime) -> None:
        """Remember the newest handled slot of a schedule (never moves backwards; replicas
        writing at once are fine: the slot's run is deduplicated anyway)."""
        moment = to_utc(at)
        try:
            async with write_transaction(self._engine) as connection:
                moved = await connection.execute(
                    update(workflow_schedules)
                    .where(
                        workflow_schedules.c.name == name,
                        workflow_schedules.c.last_fire_at < moment,
                    )
                    .values(last_fire_at=moment)
                )
                if moved.rowcount == 0:
                    exists = await connection.scalar(
                        select(workflow_schedules.c.name).where(workflow_schedules.c.name == name)
                    )
                    if exists is None:
                        await connection.execute(
                            insert(workflow_schedules).values(name=name, last_fire_at=moment)
                        )
        except IntegrityError:
            return  # another replica recorded this schedule first
