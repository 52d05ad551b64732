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
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from openautoglm.core.clock import Clock
from openautoglm.core.errors import ConflictError
from openautoglm.workflows.context import TaskFailure
from openautoglm.workflows.definition import TaskSpec, WorkflowSpec
from openautoglm.workflows.dispatch import Dispatcher
from openautoglm.workflows.flow import Flow
from openautoglm.workflows.live import LiveRun, Settled
from openautoglm.workflows.model import Run, RunState, TaskRun, TaskState, WorkflowStore
from openautoglm.workflows.runners import TaskRunners

logger = logging.getLogger(__name__)
TaskObserver = Callable[[Run, TaskRun, float | None], None]


class Executor(Dispatcher):
    """Runs workflow tasks on ``workers`` concurrent workers, committing every change first."""

    def __init__(
        self,
        store: WorkflowStore,
        runners: TaskRunners,
        clock: Clock,
        workers: int = 16,
        observe: TaskObserver | None = None,
    ) -> None:
        super().__init__(store, clock)
        self._runners = runners
        self._workers = workers
        self._observe = observe
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

    @property
    def ready_count(self) -> int:
        """Tasks waiting for a worker."""
        return len(self._ready)

    @property
    def running_count(self) -> int:
        return sum(len(live.running) for live in self._live.values())

    @property
    def active_runs(self) -> int:
        return len(self._live)

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
        if run.id in self._live:
            raise ConflictError(f"run {run.id} is already running here", code="run_active")
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
            try:
                own = await self._step(own)
            except asyncio.CancelledError:
                raise
            except Exception:  # never lose a worker: log, and take the next task
                logger.exception("workflow worker step failed")
                own = None
                await asyncio.sleep(0.1)

    async def _step(self, own: Settled | None) -> Settled | None:
        """Commit what the last task left, take the next task, run it; what it leaves."""
        if own is not None and own.end:
            await self._end(own.live, own.writes)
            return None
        picked = self._take(own)
        writes = own.writes if own is not None else []
        if picked is None:
            if own is not None:
                await self._commit(own.live, own)
            return None
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
        if self._live.get(live.run.id) is not live or live.tasks[task_id] is not running:
            # the run ended (cancelled, failed) while that was written: say so again, last
            await self._commits.apply(None, [live.tasks[task_id]])
            return None
        if self.on_wait is not None:
            self.on_wait(max(0.0, self._clock.monotonic() - queued_at))
        execution = asyncio.ensure_future(self._execute(live, running))
        live.running[task_id] = execution
        try:
            return await execution
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return None  # the run ended (failed or cancelled) while this task ran
        finally:
            live.running.pop(task_id, None)

    def _take(self, own: Settled | None) -> tuple[LiveRun, str, float] | None:
        """The next task: the best of this worker's own released tasks and the shared heap
        (ties go to the heap: it holds the earlier arrivals)."""
        while own is not None and own.ready:
            live = own.live
            if self._ready and not live.order < self._ready[0][:2]:
                break
            task_id = own.ready.pop(0)
            queued_at = live.flow.queued_at.pop(task_id, self._clock.monotonic())
            if (
                self._live.get(live.run.id) is live
                and live.tasks[task_id].state is TaskState.PENDING
            ):
                return live, task_id, queued_at
        while self._ready:
            _, _, _, run_id, task_id = heapq.heappop(self._ready)
            live_run = self._live.get(run_id)
            if live_run is None:
                continue
            task = live_run.tasks.get(task_id)
            if task is None or task.state is not TaskState.PENDING:
                live_run.flow.queued_at.pop(task_id, None)  # a stale entry
                continue
            queued_at = live_run.flow.queued_at.pop(task_id, self._clock.monotonic())
            return live_run, task_id, queued_at
        return None

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
        try:
            orjson.dumps(output, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:  # refuse it here, not in a commit it shares with others
            unstorable = TaskFailure(f"the output cannot be stored as JSON: {exc}", "python", False)
            return await self._failed(live, spec, task, unstorable)
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
            flow.start_map(spec.id, live.tasks)
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
            started = task.started_at or now
            if spec.timeout_s is None or started + timedelta(seconds=spec.timeout_s) > now:
                continue  # an entry of an earlier attempt
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
            try:
                await self._fire_timers(self._clock.now())
            except asyncio.CancelledError:
                raise
            except Exception:  # retries and approval deadlines must keep firing
                logger.exception("workflow timer failed")

    async def _fire_timers(self, now: datetime) -> None:
        await self._expire_approvals(now)
        for run_id, task_id in self._timers.due_retries(now):
            live = self._live.get(run_id)
            task = live.tasks.get(task_id) if live is not None else None
            if live is None or task is None or task.state is not TaskState.RETRYING:
                continue
            if task.next_attempt_at is not None and task.next_attempt_at > now:
                continue  # an older entry; the task's own one is still in the heap
            pending = replace(task, state=TaskState.PENDING)
            live.tasks[task_id] = pending
            match_map = task_id.split("[", 1)[0] if live.flow.is_item(task_id) else None
            if match_map is not None and match_map not in live.flow.progress:
                await self._commits.apply(None, [pending])  # its map releases it when it runs
                continue
            live.flow.queued_at[task_id] = self._clock.monotonic()  # before the await: no one
            await self._commits.apply(None, [pending])  # else may release it meanwhile
            if live.tasks.get(task_id) is pending and self._live.get(run_id) is live:
                await self._push(live, [task_id])
            else:
                live.flow.queued_at.pop(task_id, None)

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
        if self._live.get(run_id) is live:
            del self._live[run_id]
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
