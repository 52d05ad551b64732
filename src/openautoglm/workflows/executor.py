"""The executor: runs ready tasks of every run on one bounded pool of workers, durably.

Ready tasks of all runs wait in one heap ordered by the run's priority, then its deadline
(earliest first), then arrival. A worker commits a task's move to ``running`` before it executes
it, and the task's outcome before anything acts on it; a worker that finishes a task and takes
the next one writes both in one transaction (a sequential chain costs one commit per task).
Dependents are released only after the commit that made them ready.

Retries wait on the injected clock (``next_attempt_at``), so tests move time by hand. A run's
final failure (``on_failure: fail_run``) cancels its running tasks; ``continue`` lets the other
branches go on and skips what depended on the failed task. After a restart :meth:`Executor.
recover` resumes every unfinished run: finished tasks are never run again, tasks that were in
flight run again with the same idempotency key (at least once, deduplicated by the key).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from openautoglm.core.clock import Clock
from openautoglm.workflows.commits import GroupCommit
from openautoglm.workflows.definition import TaskSpec, WorkflowSpec
from openautoglm.workflows.flow import Flow
from openautoglm.workflows.live import LiveRun, Settled, Timers
from openautoglm.workflows.model import Run, RunState, TaskRun, TaskState, WorkflowStore
from openautoglm.workflows.runners import TaskFailure, TaskRunners

logger = logging.getLogger(__name__)
TaskObserver = Callable[[Run, TaskRun, float | None], None]


class Executor:
    """Runs workflow tasks on ``workers`` concurrent workers, committing every change first."""

    def __init__(
        self,
        store: WorkflowStore,
        runners: TaskRunners,
        clock: Clock,
        workers: int = 16,
        observe: TaskObserver | None = None,
    ) -> None:
        self._store = store
        self._commits = GroupCommit(store)
        self._runners = runners
        self._clock = clock
        self._workers = workers
        self._observe = observe
        self._live: dict[str, LiveRun] = {}
        self._ready: list[tuple[int, float, int, str, str]] = []
        self._timers = Timers()
        self._seq = itertools.count()
        self._wakeup = asyncio.Condition()
        self._loops: list[asyncio.Task[None]] = []
        self.on_wait: Callable[[float], None] | None = None  # queue waits, for the metrics

    # lifecycle

    def start(self) -> None:
        self._loops = [asyncio.ensure_future(self._worker()) for _ in range(self._workers)]
        self._loops.append(asyncio.ensure_future(self._timer()))

    async def close(self) -> None:
        for loop in self._loops:
            loop.cancel()
        for live in self._live.values():
            for task in live.running.values():
                task.cancel()
        running = [t for live in self._live.values() for t in live.running.values()]
        await asyncio.gather(*self._loops, *running, return_exceptions=True)

    ready_count = property(lambda self: len(self._ready))
    running_count = property(lambda self: sum(len(r.running) for r in self._live.values()))
    active_runs = property(lambda self: len(self._live))

    def live(self, run_id: str) -> LiveRun | None:
        return self._live.get(run_id)

    async def wait(self, run_id: str, timeout_s: float | None = None) -> None:
        """Until the run finishes here (tests, the CLI's blocking mode)."""
        live = self._live.get(run_id)
        if live is not None:
            async with asyncio.timeout(timeout_s):
                await live.done.wait()

    # admitting runs

    async def admit(self, run: Run, spec: WorkflowSpec, tasks: list[TaskRun]) -> None:
        """Take an unfinished run (new, or recovered after a restart) and release what is ready."""
        live = LiveRun(run, Flow(spec), {task.task_id: task for task in tasks})
        self._live[run.id] = live
        changes = [  # in flight when the process died: they run again, same idempotency key
            replace(task, state=TaskState.PENDING)
            for task in tasks
            if task.state is TaskState.RUNNING
        ]
        for task in changes:
            live.tasks[task.task_id] = task
        if run.state is RunState.QUEUED:
            live.run = replace(run, state=RunState.RUNNING, started_at=self._clock.now())
        await self._commits.apply(live.run if live.run is not run else None, changes)
        for task in live.tasks.values():
            if task.state is TaskState.RETRYING and task.next_attempt_at is not None:
                self._timers.retry_at(task.next_attempt_at, run.id, task.task_id)
            elif task.state is TaskState.WAITING:
                self._arm_approval(live, task)
        await self._commit(live, self._settle(live, [], scan_all=True))

    # the workers

    async def _worker(self) -> None:
        own: Settled | None = None
        while True:
            if own is None:
                async with self._wakeup:
                    await self._wakeup.wait_for(lambda: bool(self._ready))
            if own is not None and own.end:
                await self._end(own.live, own.writes)
                own = None
                continue
            picked = self._take(own)
            writes = own.writes if own is not None else []
            if picked is None:
                if own is not None:
                    await self._commit(own.live, own)
                own = None
                continue
            live, task_id, queued_at = picked
            running = replace(
                live.tasks[task_id],
                state=TaskState.RUNNING,
                attempts=live.tasks[task_id].attempts + 1,
                started_at=self._clock.now(),
                next_attempt_at=None,
            )
            live.tasks[task_id] = running
            await self._commits.apply(None, [*writes, running])  # its dependency and it, together
            if own is not None:
                await self._after_commit(own)
            own = None
            if self.on_wait is not None:
                self.on_wait(max(0.0, self._clock.monotonic() - queued_at))
            execution = asyncio.ensure_future(self._execute(live, running))
            live.running[task_id] = execution
            try:
                own = await execution
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                own = None  # the run ended (failed or cancelled) while this task ran
            finally:
                live.running.pop(task_id, None)

    def _take(self, own: Settled | None) -> tuple[LiveRun, str, float] | None:
        """The next task: the best of this worker's own released tasks and the shared heap."""
        if own is not None and own.ready:
            live = own.live
            if not self._ready or live.order <= self._ready[0][:2]:
                task_id = own.ready.pop(0)
                return live, task_id, live.flow.queued_at.pop(task_id, self._clock.monotonic())
        while self._ready:
            _, _, _, run_id, task_id = heapq.heappop(self._ready)
            live_run = self._live.get(run_id)
            if live_run is None:
                continue
            task = live_run.tasks.get(task_id)
            if task is None or task.state is not TaskState.PENDING:
                continue
            queued_at = live_run.flow.queued_at.pop(task_id, self._clock.monotonic())
            return live_run, task_id, queued_at
        return None

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
        self._live.pop(live.run.id, None)

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

    # executing one task

    async def _execute(self, live: LiveRun, task: TaskRun) -> Settled | None:
        """Run one attempt and decide its outcome; returns what is still to commit."""
        spec = live.flow.spec_of(task.task_id)
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(spec.timeout_s):
                output, state = await self._attempt(live, spec, task)
        except TimeoutError:
            failure = TaskFailure(f"timed out after {spec.timeout_s:g} s", "timeout")
            return await self._failed(live, spec, task, failure)
        except TaskFailure as failure:
            return await self._failed(live, spec, task, failure)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a task type must not take the executor down
            logger.exception("task %s of run %s crashed", task.task_id, live.run.id)
            return await self._failed(live, spec, task, TaskFailure(repr(exc), "error"))
        if state is TaskState.RUNNING:  # a map waits for its items; an approval for a person
            return None
        finished = replace(
            task,
            state=state,
            output=output,
            finished_at=self._clock.now(),
            error=None,
            logs=live.take_logs(task),
        )
        live.tasks[task.task_id] = finished
        if self._observe is not None:
            self._observe(live.run, finished, self._clock.monotonic() - started)
        return self._settle(live, [finished])

    async def _attempt(self, live: LiveRun, spec: TaskSpec, task: TaskRun) -> tuple[Any, TaskState]:
        flow = live.flow
        context = flow.context(live.run, live.tasks, task, live.logger(task.task_id))
        if spec.type == "branch":
            return {"chosen": flow.choose_branch(spec, context)}, TaskState.SUCCEEDED
        if spec.type == "map" and not flow.is_item(task.task_id):
            items = flow.map_items(spec, context)
            children = [
                TaskRun(live.run.id, child, TaskState.PENDING)
                for child in flow.expand_map(spec.id, len(items))
                if child not in live.tasks
            ]
            await self._commits.apply(None, (), children)
            for child in children:
                live.tasks[child.task_id] = child
            if not items:
                return [], TaskState.SUCCEEDED
            await self._push(live, self._map_release(live, spec.id))
            return None, TaskState.RUNNING
        if spec.type == "approval":
            waiting = replace(task, state=TaskState.WAITING)
            live.tasks[task.task_id] = waiting
            await self._commits.apply(None, [waiting])
            self._arm_approval(live, waiting)
            return None, TaskState.RUNNING
        inner = flow.item_spec(spec) if flow.is_item(task.task_id) else spec
        output = await self._runners.run(inner.type, inner.config, context)
        return output, TaskState.SUCCEEDED

    async def _failed(
        self, live: LiveRun, spec: TaskSpec, task: TaskRun, failure: TaskFailure
    ) -> Settled | None:
        now = self._clock.now()
        retry = spec.retry
        line = f"attempt {task.attempts} failed ({failure.error_class}): {failure}"
        if failure.retryable and retry.should_retry(task.attempts, failure.error_class):
            at = now + timedelta(seconds=retry.delay_for(task.attempts))
            waiting = replace(
                task,
                state=TaskState.RETRYING,
                error=str(failure),
                error_class=failure.error_class,
                next_attempt_at=at,
                logs=live.take_logs(task, f"{line}; next attempt at {at.isoformat()}"),
            )
            live.tasks[task.task_id] = waiting
            await self._commits.apply(None, [waiting])
            self._timers.retry_at(at, live.run.id, task.task_id)
            return None
        failed = replace(
            task,
            state=TaskState.FAILED,
            error=str(failure),
            error_class=failure.error_class,
            finished_at=now,
            logs=live.take_logs(task, line),
        )
        live.tasks[task.task_id] = failed
        if self._observe is not None:
            self._observe(live.run, failed, None)
        return self._settle(live, [failed])

    # deciding what follows

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
        spec = live.flow.spec_of(map_id)
        limit = int(spec.config.get("max_parallel", 4))
        flow = live.flow
        room = limit - flow.map_running(map_id, live.tasks) - flow.queued(map_id)
        return flow.map_waiting(map_id, live.tasks)[: max(0, room)]

    # time

    def _arm_approval(self, live: LiveRun, task: TaskRun) -> None:
        timeout_s = live.flow.spec_of(task.task_id).timeout_s
        if timeout_s is not None and task.started_at is not None:
            at = task.started_at + timedelta(seconds=timeout_s)
            self._timers.approval_until(at, live.run.id, task.task_id)

    async def _expire_approvals(self, now: datetime) -> None:
        for run_id, task_id in self._timers.due_approvals(now):
            live = self._live.get(run_id)
            task = live.tasks.get(task_id) if live is not None else None
            if live is None or task is None or task.state is not TaskState.WAITING:
                continue
            spec = live.flow.spec_of(task_id)
            expired = replace(
                task,
                state=TaskState.FAILED,
                error=f"no decision within {spec.timeout_s:g} s",
                error_class="timeout",
                finished_at=now,
            )
            live.tasks[task_id] = expired
            await self._commit(live, self._settle(live, [expired]))

    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            now = self._clock.now()
            await self._expire_approvals(now)
            due = self._timers.due_retries(now)
            for run_id, task_id in due:
                live = self._live.get(run_id)
                if live is None or live.tasks[task_id].state is not TaskState.RETRYING:
                    continue
                pending = replace(live.tasks[task_id], state=TaskState.PENDING)
                live.tasks[task_id] = pending
                await self._commits.apply(None, [pending])
                await self._push(live, [task_id])

    # operator actions

    async def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        live = self._live.get(run_id)
        if live is None:
            return False
        now = self._clock.now()
        changes = [
            replace(task, state=TaskState.CANCELLED, finished_at=now)
            for task in live.tasks.values()
            if not task.state.finished
        ]
        live.run = replace(live.run, state=RunState.CANCELLED, finished_at=now, error=reason)
        for task in changes:
            live.tasks[task.task_id] = task
        await self._commits.apply(live.run, changes)
        for execution in list(live.running.values()):
            execution.cancel()
        live.done.set()
        self._live.pop(run_id, None)
        return True

    async def resolve_approval(
        self, run_id: str, task_id: str, approved: bool, actor: str, comment: str | None
    ) -> TaskRun | None:
        live = self._live.get(run_id)
        task = live.tasks.get(task_id) if live is not None else None
        if live is None or task is None or task.state is not TaskState.WAITING:
            return None
        now = self._clock.now()
        decision = {"approved": approved, "by": actor, "comment": comment}
        if approved:
            done = replace(task, state=TaskState.SUCCEEDED, output=decision, finished_at=now)
        else:
            done = replace(
                task,
                state=TaskState.FAILED,
                output=decision,
                error=f"rejected by {actor}" + (f": {comment}" if comment else ""),
                error_class="rejected",
                finished_at=now,
            )
        live.tasks[task_id] = done
        await self._commit(live, self._settle(live, [done]))
        return done
