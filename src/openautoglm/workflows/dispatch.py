"""The dispatching half of the executor: the ready heap, and committing what follows from
finished tasks before anything is released (see ``executor.py`` for the whole picture)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import replace

from openautoglm.core.clock import Clock
from openautoglm.workflows.commits import GroupCommit
from openautoglm.workflows.live import LiveRun, Settled, Timers
from openautoglm.workflows.model import TaskRun, WorkflowStore


class Dispatcher:
    """Live runs, the ready heap shared by all runs, and the commit-then-release steps."""

    def __init__(self, store: WorkflowStore, clock: Clock) -> None:
        self._store = store
        self._commits = GroupCommit(store)
        self._clock = clock
        self._live: dict[str, LiveRun] = {}
        self._ready: list[tuple[int, float, int, str, str]] = []
        self._timers = Timers()
        self._seq = itertools.count()
        self._wakeup = asyncio.Condition()

    async def _commit(self, live: LiveRun, settled: Settled) -> None:
        """Write what ``settled`` holds, then release its ready tasks to every worker."""
        if settled.end:
            await self._end(live, settled.writes)
            return
        if settled.writes:
            await self._commits.apply(None, settled.writes)
        await self._after_commit(settled)

    async def _end(self, live: LiveRun, writes: list[TaskRun]) -> None:
        await self._commits.apply(live.run, writes)
        current = asyncio.current_task()
        for execution in list(live.running.values()):
            if execution is not current:
                execution.cancel()
        live.done.set()
        if self._live.get(live.run.id) is live:
            del self._live[live.run.id]

    async def _after_commit(self, settled: Settled) -> None:
        live = settled.live
        committed = [task.task_id for task in settled.writes]
        live.flow.uncommitted.difference_update(committed)
        await self._push(live, settled.ready)
        settled.ready = []
        if self._live.get(live.run.id) is not live:
            return
        # another worker may have looked at their dependents while these were uncommitted
        follow = self._settle(live, [], candidates=live.flow.dependents_of(committed))
        if follow.writes or follow.ready:
            await self._commit(live, follow)

    async def _push(self, live: LiveRun, task_ids: list[str]) -> None:
        if not task_ids:
            return
        priority, deadline = live.order
        now = self._clock.monotonic()
        for task_id in task_ids:
            live.flow.queued_at.setdefault(task_id, now)
            heapq.heappush(self._ready, (priority, deadline, next(self._seq), live.run.id, task_id))
        async with self._wakeup:
            self._wakeup.notify(len(task_ids))

    def _settle(
        self,
        live: LiveRun,
        changed: list[TaskRun],
        scan_all: bool = False,
        candidates: list[str] | None = None,
    ) -> Settled:
        """What the finished tasks imply, to be committed before anything is released. A run
        that ends is finished here: its end is written and its other tasks cancelled."""
        outcome = live.flow.propagate(
            live.run, live.tasks, changed, self._clock.now(), scan_all, candidates or ()
        )
        writes = [*changed, *outcome.changes]
        if outcome.run_state is not None:
            live.run = replace(
                live.run,
                state=outcome.run_state,
                finished_at=self._clock.now(),
                outputs=outcome.outputs,
                error=outcome.error,
            )
            return Settled(live, writes, [], end=True)
        ready = list(outcome.ready)
        for map_id in dict.fromkeys(outcome.maps_to_feed):
            ready += self._map_release(live, map_id)
        for task_id in ready:
            live.flow.queued_at.setdefault(task_id, self._clock.monotonic())
        live.flow.uncommitted.update(task.task_id for task in writes if task.state.finished)
        return Settled(live, writes, ready)

    def _map_release(self, live: LiveRun, map_id: str) -> list[str]:
        limit = int(live.flow.spec_of(map_id).config.get("max_parallel", 4))
        return live.flow.release_items(map_id, limit, live.tasks)
