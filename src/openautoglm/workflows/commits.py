"""Group commit: the executor's writes, from all workers, in as few transactions as possible.

Each caller waits until its changes are committed (so "committed before acted on" holds); while
one transaction is being written, the changes that arrive queue up and go together in the
next one. A lone writer pays one transaction, as before; sixteen workers finishing at once pay
one instead of sixteen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from openautoglm.workflows.model import Run, TaskRun, WorkflowStore


@dataclass
class _Batch:
    runs: dict[str, Run] = field(default_factory=dict)
    tasks: dict[tuple[str, str], TaskRun] = field(default_factory=dict)
    new_tasks: list[TaskRun] = field(default_factory=list)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit:
    """Merges concurrent ``apply`` calls into shared transactions, in arrival order."""

    def __init__(self, store: WorkflowStore) -> None:
        self._store = store
        self._next: _Batch | None = None
        self._writing = False

    async def apply(
        self,
        run: Run | None = None,
        tasks: Sequence[TaskRun] = (),
        new_tasks: Sequence[TaskRun] = (),
    ) -> None:
        """Return once these changes are committed (raising what the store raised)."""
        batch = self._next
        if batch is None:
            batch = self._next = _Batch()
        if run is not None:
            batch.runs[run.id] = run
        batch.new_tasks.extend(new_tasks)
        for task in tasks:  # a later change of the same task replaces an earlier one
            batch.tasks[(task.run_id, task.task_id)] = task
        if not self._writing:
            self._writing = True
            try:
                while self._next is not None:
                    current, self._next = self._next, None
                    await self._write(current)
            finally:
                self._writing = False
        await asyncio.shield(batch.done)

    async def _write(self, batch: _Batch) -> None:
        try:
            await self._store.apply_many(
                list(batch.runs.values()), list(batch.tasks.values()), batch.new_tasks
            )
        except BaseException as exc:
            if not batch.done.done():
                batch.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            batch.done.set_result(None)
