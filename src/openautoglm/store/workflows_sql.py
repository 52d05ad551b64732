"""Workflow definitions, runs and task runs in the relational store.

The executor writes every state change through :meth:`SqlWorkflowStore.apply` — a run's row and
any number of task rows in one transaction — before it acts on it. ``create_run`` is idempotent
by ``dedupe_key`` (a unique column): a trigger that delivers the same event twice gets the run
the first delivery created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from openautoglm.store.database import shielded, write_transaction
from openautoglm.store.tables import (
    workflow_definitions,
    workflow_runs,
    workflow_schedules,
    workflow_tasks,
)
from openautoglm.store.times import aware, to_utc
from openautoglm.store.workflow_rows import (
    json_text,
    run_from_row,
    run_values,
    task_from_row,
    task_values,
)
from openautoglm.store.workflow_writer import writer_for
from openautoglm.workflows.model import Run, RunState, TaskRun


class SqlWorkflowStore:
    """``WorkflowStore`` on SQLAlchemy Core, and the cron scheduler's state."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = writer_for(engine)

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
                    document=json_text(dict(document)),
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
                await connection.execute(insert(workflow_runs).values(id=run.id, **run_values(run)))
                if tasks:
                    await connection.execute(
                        insert(workflow_tasks),
                        [
                            {"run_id": t.run_id, "task_id": t.task_id, **task_values(t)}
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
        """Several runs' and tasks' changes in one transaction (new task runs first)."""
        await self._writer.write(runs, tasks, new_tasks)

    async def close(self) -> None:
        """Release the writer's connection (before the engine is disposed)."""
        await self._writer.close()

    async def get_run(self, run_id: str) -> Run | None:
        return await self._run_where(workflow_runs.c.id == run_id)

    async def _run_where(self, condition: Any) -> Run | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(workflow_runs).where(condition))).first()
        return None if row is None else run_from_row(row)

    async def tasks(self, run_id: str) -> list[TaskRun]:
        query = select(workflow_tasks).where(workflow_tasks.c.run_id == run_id)
        async with self._engine.connect() as connection:
            return [task_from_row(row) for row in await connection.execute(query)]

    async def runs(
        self,
        workflow: str | None = None,
        state: RunState | None = None,
        limit: int = 100,
        tenant_id: str | None = None,
    ) -> list[Run]:
        query = select(workflow_runs)
        if tenant_id is not None:
            query = query.where(workflow_runs.c.tenant_id == tenant_id)
        if workflow is not None:
            query = query.where(workflow_runs.c.workflow == workflow)
        if state is not None:
            query = query.where(workflow_runs.c.state == state.value)
        query = query.order_by(workflow_runs.c.created_at.desc(), workflow_runs.c.id).limit(limit)
        async with self._engine.connect() as connection:
            return [run_from_row(row) for row in await connection.execute(query)]

    async def unfinished_runs(self) -> list[Run]:
        query = (
            select(workflow_runs)
            .where(workflow_runs.c.state.in_((RunState.QUEUED.value, RunState.RUNNING.value)))
            .order_by(workflow_runs.c.created_at)
        )
        async with self._engine.connect() as connection:
            return [run_from_row(row) for row in await connection.execute(query)]

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
