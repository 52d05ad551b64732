"""How the workflow store writes: many small transactions, as cheaply as the database allows.

The executor commits at least once per task. On PostgreSQL the writes run on one held async
connection (no pool checkout and reset per transaction). On SQLite, aiosqlite costs a thread
hop per call — several per transaction — so the writes run on a synchronous connection in one
dedicated thread instead: one hop per transaction. Both hold this process's SQLite writer lock,
and a broken connection is replaced once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event, insert, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openautoglm.store.database import set_sqlite_pragmas, writer_lock
from openautoglm.store.tables import workflow_runs, workflow_tasks
from openautoglm.store.workflow_rows import UPDATE_TASK, run_values, task_values
from openautoglm.workflows.model import Run, StoreUnavailableError, TaskRun


def _statements(
    runs: Sequence[Run], tasks: Sequence[TaskRun], new_tasks: Sequence[TaskRun]
) -> Iterator[tuple[Any, Any]]:
    for run in runs:
        yield (
            update(workflow_runs).where(workflow_runs.c.id == run.id).values(**run_values(run)),
            None,
        )
    if new_tasks:
        yield (
            insert(workflow_tasks),
            [{"run_id": t.run_id, "task_id": t.task_id, **task_values(t)} for t in new_tasks],
        )
    if tasks:
        yield (
            UPDATE_TASK,
            [{"b_run_id": t.run_id, "b_task_id": t.task_id, **task_values(t)} for t in tasks],
        )


class Writer(Protocol):
    async def write(
        self, runs: Sequence[Run], tasks: Sequence[TaskRun], new_tasks: Sequence[TaskRun]
    ) -> None: ...

    async def close(self) -> None: ...


class AsyncWriter:
    """Transactions on one held async connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None

    async def write(
        self, runs: Sequence[Run], tasks: Sequence[TaskRun], new_tasks: Sequence[TaskRun]
    ) -> None:
        gate = writer_lock(self._engine)
        async with gate if gate is not None else contextlib.nullcontext():
            try:
                await self._write(runs, tasks, new_tasks)
            except IntegrityError:
                raise
            except (DBAPIError, OSError):
                await self.close()
                try:
                    await self._write(runs, tasks, new_tasks)
                except (DBAPIError, OSError) as exc:
                    raise StoreUnavailableError(str(exc)) from exc

    async def _write(
        self, runs: Sequence[Run], tasks: Sequence[TaskRun], new_tasks: Sequence[TaskRun]
    ) -> None:
        if self._connection is None:
            self._connection = await self._engine.connect()
        async with self._connection.begin():
            for statement, params in _statements(runs, tasks, new_tasks):
                await self._connection.execute(statement, params)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


class SqliteThreadWriter:
    """Transactions on a synchronous SQLite connection owned by one thread."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._async_engine = engine
        url = engine.url.set(drivername="sqlite")
        self._engine: Engine = create_engine(url, pool_size=1, max_overflow=0)
        event.listen(self._engine, "connect", set_sqlite_pragmas)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="workflow-writer")
        self._connection: Connection | None = None

    async def write(
        self, runs: Sequence[Run], tasks: Sequence[TaskRun], new_tasks: Sequence[TaskRun]
    ) -> None:
        gate = writer_lock(self._async_engine)
        assert gate is not None
        loop = asyncio.get_running_loop()
        async with gate:
            await loop.run_in_executor(self._thread, self._write, runs, tasks, new_tasks)

    def _write(
        self, runs: Sequence[Run], tasks: Sequence[TaskRun], new_tasks: Sequence[TaskRun]
    ) -> None:
        for attempt in (1, 2):
            try:
                if self._connection is None:
                    self._connection = self._engine.connect()
                with self._connection.begin():
                    for statement, params in _statements(runs, tasks, new_tasks):
                        self._connection.execute(statement, params)
                return
            except IntegrityError:
                raise
            except (DBAPIError, OSError) as exc:
                self._close()
                if attempt == 2:
                    raise StoreUnavailableError(str(exc)) from exc

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._engine.dispose()
        self._thread.shutdown(wait=False)


def writer_for(engine: AsyncEngine) -> Writer:
    """The cheapest writer for ``engine``'s database."""
    if engine.dialect.name == "sqlite":
        return SqliteThreadWriter(engine)
    return AsyncWriter(engine)
