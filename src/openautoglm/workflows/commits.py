"""Group commit: the executor's writes, from all workers, in as few transactions as possible.

Each caller waits until its changes are committed (so "committed before acted on" holds); while
one transaction is being written, the changes that arrive queue up and go together in the
next one. A lone writer pays one transaction; sixteen workers finishing at once pay one instead
of sixteen. The writing runs in a task of its own (a cancelled caller cancels only its wait),
and a database that is away is retried with backoff (up to 5 s) until the write succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from openautoglm.workflows.model import Run, StoreUnavailableError, TaskRun, WorkflowStore

logger = logging.getLogger(__name__)


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

    def __init__(
        self, store: WorkflowStore, retry_s: float = 0.1, max_retry_s: float = 5.0
    ) -> None:
        self._store = store
        self._next: _Batch | None = None
        self._writer: asyncio.Task[None] | None = None
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s

    async def apply(
        self,
        run: Run | None = None,
        tasks: Sequence[TaskRun] = (),
        new_tasks: Sequence[TaskRun] = (),
    ) -> None:
        """Return once these changes are committed (raising what the store refused).

        The writing happens in a task of its own, so a caller that is cancelled while it waits
        cancels nothing but its own wait."""
        batch = self._next
        if batch is None:
            batch = self._next = _Batch()
        if run is not None:
            batch.runs[run.id] = run
        batch.new_tasks.extend(new_tasks)
        for task in tasks:  # a later change of the same task replaces an earlier one
            batch.tasks[(task.run_id, task.task_id)] = task
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_all())
        await asyncio.shield(batch.done)

    async def _write_all(self) -> None:
        while self._next is not None:
            current, self._next = self._next, None
            await self._write(current)

    async def _write(self, batch: _Batch) -> None:
        delay = self._retry_s
        while True:
            try:
                await self._store.apply_many(
                    list(batch.runs.values()), list(batch.tasks.values()), batch.new_tasks
                )
            except (StoreUnavailableError, OSError) as exc:  # the database is away: wait, try again
                logger.warning("workflow commit failed, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_s)
                continue
            except Exception as exc:  # refused for good: tell those who wait
                batch.done.set_exception(exc)
                return
            batch.done.set_result(None)
            return

    async def close(self) -> None:
        """Finish what is queued (the executor's last words), then stop."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait_for(asyncio.shield(self._writer), timeout=10)
