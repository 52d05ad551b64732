"""What follows from finished tasks: the pure decisions of a run, without I/O.

:meth:`Flow.propagate` takes a run's task states after some tasks finished and returns what that
implies — dependents that are now ready or skipped (trigger rules, branch choices), maps whose
items are all done, the run's end (every task finished, or a ``fail_run`` failure) and its
rendered outputs. The executor commits those changes, then releases the ready tasks.

Trigger rules, once every dependency has finished: ``all_success`` runs when all succeeded;
``none_failed`` when none failed and at least one succeeded (a join after a branch);
``all_done`` always. Otherwise the task is skipped, and so in turn are its dependents.
A ``map`` task's items are task runs ``<map id>[<index>]``; the map succeeds with the list of
their outputs when all succeed, and fails when one fails for good.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from openautoglm.workflows.context import TaskContext, TaskFailure, TaskOutputs
from openautoglm.workflows.definition import TaskSpec, WorkflowSpec
from openautoglm.workflows.model import Run, RunState, TaskRun, TaskState
from openautoglm.workflows.templates import TemplateError, evaluate, render_value

_ITEM = re.compile(r"^(?P<map>.+)\[(?P<index>\d+)\]$")


@dataclass
class MapProgress:
    """A map's items: those not yet released (in order), in flight, and finished."""

    ids: list[str]
    waiting: deque[str]
    in_flight: int = 0
    finished: int = 0


@dataclass
class Outcome:
    """What the finished tasks imply (see :meth:`Flow.propagate`)."""

    changes: list[TaskRun] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    maps_to_feed: list[str] = field(default_factory=list)
    run_state: RunState | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None


class Flow:
    """One run's definition with the lookups the executor needs."""

    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        self._specs = {task.id: task for task in spec.tasks}
        self._dependents: dict[str, list[str]] = {task.id: [] for task in spec.tasks}
        for task in spec.tasks:
            for dependency in task.depends:
                self._dependents[dependency].append(task.id)
        self.items: dict[str, list[Any]] = {}
        self.progress: dict[str, MapProgress] = {}
        self._cursor: dict[str, int] = {}  # per task: its dependencies known finished
        self._depends_sets: dict[str, frozenset[str]] = {}
        self.queued_at: dict[str, float] = {}  # released, not yet taken by a worker
        self.uncommitted: set[str] = set()  # finished in memory, not yet in the store

    # names

    @staticmethod
    def is_item(task_id: str) -> bool:
        return _ITEM.match(task_id) is not None

    @staticmethod
    def expand_map(map_id: str, count: int) -> list[str]:
        return [f"{map_id}[{index}]" for index in range(count)]

    def spec_of(self, task_id: str) -> TaskSpec:
        """The task's spec; an item has its map's (retry, timeout, failure mode)."""
        match = _ITEM.match(task_id)
        return self._specs[match["map"] if match else task_id]

    def item_spec(self, map_spec: TaskSpec) -> TaskSpec:
        """The spec each item of a map runs: its inner task, with the map's policies."""
        inner = dict(map_spec.config["task"])
        task_type = str(inner.pop("type"))
        return replace(map_spec, type=task_type, config=inner)

    # context

    def context(
        self,
        run: Run,
        tasks: Mapping[str, TaskRun],
        task: TaskRun,
        log: Callable[[str], None] | None = None,
    ) -> TaskContext:
        upstream = _Succeeded(tasks, self._specs)
        item: Any = None
        index: int | None = None
        match = _ITEM.match(task.task_id)
        if match is not None:
            index = int(match["index"])
            item = self.items.get(match["map"], [None] * (index + 1))[index]
        context = TaskContext(
            run_id=run.id,
            task_id=task.task_id,
            attempt=task.attempts,
            idempotency_key=task.idempotency_key,
            inputs=run.inputs,
            upstream=upstream,
            item=item,
            index=index,
        )
        return context if log is None else replace(context, log=log)

    def choose_branch(self, spec: TaskSpec, context: TaskContext) -> list[str]:
        variables = context.variables()
        try:
            for case in spec.config.get("cases", ()):
                if evaluate(str(case["when"]), variables):
                    return list(case["then"])
        except TemplateError as exc:
            raise TaskFailure(f"branch condition: {exc}", "template", retryable=False) from exc
        return list(spec.config.get("default", ()))

    def map_items(self, spec: TaskSpec, context: TaskContext) -> list[Any]:
        try:
            items = render_value(spec.config["over"], context.variables())
        except TemplateError as exc:
            raise TaskFailure(f"map over: {exc}", "template", retryable=False) from exc
        if not isinstance(items, list):
            raise TaskFailure(
                f"map over must give a list, got {type(items).__name__}", "template", False
            )
        self.items[spec.id] = items
        return items

    # maps

    def start_map(self, map_id: str, tasks: Mapping[str, TaskRun]) -> None:
        """Count a map's items once they exist (first run, or again after a restart)."""
        ids = self.expand_map(map_id, len(self.items[map_id]))
        states = [tasks[item].state for item in ids]
        self.progress[map_id] = MapProgress(
            ids=ids,
            waiting=deque(i for i, st in zip(ids, states, strict=True) if st is TaskState.PENDING),
            in_flight=sum(state is TaskState.RETRYING for state in states),
            finished=sum(state.finished for state in states),
        )

    def release_items(self, map_id: str, limit: int, tasks: Mapping[str, TaskRun]) -> list[str]:
        """The next items to run, keeping at most ``limit`` of the map's items in flight."""
        progress = self.progress.get(map_id)
        released: list[str] = []
        while progress is not None and progress.waiting and progress.in_flight < limit:
            item = progress.waiting.popleft()
            if tasks[item].state is TaskState.PENDING and item not in self.queued_at:
                progress.in_flight += 1
                released.append(item)
        return released

    # propagation

    def propagate(
        self,
        run: Run,
        tasks: dict[str, TaskRun],
        changed: Iterable[TaskRun],
        now: datetime,
        scan_all: bool = False,
        candidates: Iterable[str] = (),
    ) -> Outcome:
        """Everything that follows from ``changed`` (already in ``tasks``); ``candidates`` are
        pending tasks to decide as well (``scan_all``: every pending task)."""
        outcome = Outcome()
        finished = [task for task in changed if task.state.finished]
        waiting = deque(t for t in candidates if tasks[t].state is TaskState.PENDING)
        if scan_all:
            waiting = deque(t for t in self._specs if tasks[t].state is TaskState.PENDING)
        ready: dict[str, None] = {}
        while finished or waiting:  # a worklist, not recursion: skips can chain 10,000 deep
            if not finished:
                task_id = waiting.popleft()
                if tasks[task_id].state is not TaskState.PENDING:
                    continue
                decision = self._decide(task_id, tasks)
                if decision is TaskState.PENDING and task_id not in self.queued_at:
                    ready[task_id] = None
                elif decision is TaskState.SKIPPED:
                    skipped = replace(tasks[task_id], state=TaskState.SKIPPED, finished_at=now)
                    self._change(tasks, outcome, skipped)
                    finished.append(skipped)
                continue
            task = finished.pop()
            match = _ITEM.match(task.task_id)
            if match is not None:
                done_map = self._finish_map(match["map"], task, tasks, now)
                if done_map is None:
                    outcome.maps_to_feed.append(match["map"])
                else:
                    self._change(tasks, outcome, done_map)
                    self._drop_unreleased_items(match["map"], tasks, outcome, now)
                    finished.append(done_map)
                continue
            spec = self._specs[task.task_id]
            if task.state is TaskState.FAILED and spec.on_failure == "fail_run":
                return self._fail_run(tasks, outcome, task, now)
            skipped_by_branch: set[str] = set()
            if spec.type == "branch" and task.state is TaskState.SUCCEEDED:
                chosen = set((task.output or {}).get("chosen", ()))
                skipped_by_branch = set(self._dependents[task.task_id]) - chosen
            for dependent in self._dependents[task.task_id]:
                if tasks[dependent].state is not TaskState.PENDING:
                    continue
                if dependent in skipped_by_branch:
                    skipped = replace(tasks[dependent], state=TaskState.SKIPPED, finished_at=now)
                    self._change(tasks, outcome, skipped)
                    finished.append(skipped)
                else:
                    waiting.append(dependent)
        outcome.ready = [t for t in ready if tasks[t].state is TaskState.PENDING]
        if not outcome.ready and not self.queued_at and self._all_finished(tasks):
            self._finish_run(run, tasks, outcome)
        return outcome

    def _drop_unreleased_items(
        self, map_id: str, tasks: dict[str, TaskRun], outcome: Outcome, now: datetime
    ) -> None:
        """A map that failed for good: its items not yet started will never run."""
        progress = self.progress.get(map_id)
        for item in (tasks[i] for i in (progress.ids if progress else ())):
            if item.state in (TaskState.PENDING, TaskState.RETRYING):
                self.queued_at.pop(item.task_id, None)
                self._change(
                    tasks, outcome, replace(item, state=TaskState.CANCELLED, finished_at=now)
                )

    def _all_finished(self, tasks: dict[str, TaskRun]) -> bool:
        # Cheap most of the time: the spec order puts late tasks last, so an unfinished one
        # is usually found at once when scanning backwards.
        return all(tasks[task_id].state.finished for task_id in reversed(tasks))

    def dependents_of(self, task_ids: Iterable[str]) -> list[str]:
        """The direct dependents of ``task_ids`` (an item's are its map's)."""
        out: list[str] = []
        for task_id in task_ids:
            if not self.is_item(task_id):
                out += self._dependents.get(task_id, ())
        return list(dict.fromkeys(out))

    def _depends_set(self, spec: TaskSpec) -> frozenset[str]:
        found = self._depends_sets.get(spec.id)
        if found is None:
            found = self._depends_sets[spec.id] = frozenset(spec.depends)
        return found

    def _decide(self, task_id: str, tasks: Mapping[str, TaskRun]) -> TaskState | None:
        """PENDING: ready to run; SKIPPED; None: still waiting for dependencies."""
        spec = self._specs[task_id]
        depends = spec.depends
        if self.uncommitted and not self.uncommitted.isdisjoint(self._depends_set(spec)):
            return None  # decided again once that dependency is committed
        # Dependencies only ever finish, so a cursor past the finished (and committed) ones
        # makes a join with thousands of dependencies cost O(1) per finished dependency.
        index = self._cursor.get(task_id, 0)
        while index < len(depends):
            dependency = depends[index]
            if not tasks[dependency].state.finished:
                break
            index += 1
        self._cursor[task_id] = index
        if index < len(depends):
            return None
        states = [tasks[d].state for d in depends]
        if spec.trigger == "all_done":
            return TaskState.PENDING
        if spec.trigger == "none_failed":
            ok = TaskState.FAILED not in states and (not states or TaskState.SUCCEEDED in states)
            return TaskState.PENDING if ok else TaskState.SKIPPED
        ok = all(state is TaskState.SUCCEEDED for state in states)
        return TaskState.PENDING if ok else TaskState.SKIPPED

    def _finish_map(
        self, map_id: str, item: TaskRun, tasks: dict[str, TaskRun], now: datetime
    ) -> TaskRun | None:
        """The map's end once ``item`` finished: failed with it, or succeeded with the last."""
        map_task = tasks[map_id]
        progress = self.progress.get(map_id)
        if map_task.state.finished or progress is None:
            return None
        progress.in_flight -= 1
        progress.finished += 1
        if item.state is TaskState.FAILED:
            return replace(
                map_task,
                state=TaskState.FAILED,
                error=f"item {item.task_id} failed: {item.error}",
                error_class=item.error_class,
                finished_at=now,
            )
        if progress.finished < len(progress.ids):
            return None
        return replace(
            map_task,
            state=TaskState.SUCCEEDED,
            output=[tasks[i].output for i in progress.ids],
            finished_at=now,
        )

    def _fail_run(
        self, tasks: dict[str, TaskRun], outcome: Outcome, failed: TaskRun, now: datetime
    ) -> Outcome:
        for task in list(tasks.values()):
            if not task.state.finished and task.task_id != failed.task_id:
                self._change(
                    tasks, outcome, replace(task, state=TaskState.CANCELLED, finished_at=now)
                )
        outcome.ready = []
        outcome.run_state = RunState.FAILED
        outcome.error = f"task {failed.task_id} failed: {failed.error}"
        return outcome

    def _finish_run(self, run: Run, tasks: Mapping[str, TaskRun], outcome: Outcome) -> None:
        failed = [
            t for t in tasks.values() if t.state is TaskState.FAILED and not self.is_item(t.task_id)
        ]
        if failed:
            outcome.run_state = RunState.FAILED
            outcome.error = "; ".join(f"task {t.task_id} failed: {t.error}" for t in failed)
            return
        outputs = TaskOutputs(_Succeeded(tasks, self._specs))  # skipped tasks are undefined
        variables = {"inputs": dict(run.inputs), "tasks": outputs, "run": {"id": run.id}}
        try:
            outcome.outputs = dict(render_value(dict(self.spec.outputs), variables))
        except TemplateError as exc:
            outcome.run_state = RunState.FAILED
            outcome.error = f"outputs: {exc}"
            return
        outcome.run_state = RunState.SUCCEEDED

    @staticmethod
    def _change(tasks: dict[str, TaskRun], outcome: Outcome, task: TaskRun) -> None:
        tasks[task.task_id] = task
        outcome.changes.append(task)


class _Succeeded(Mapping[str, Any]):
    """The outputs of a run's succeeded tasks, looked up when a template asks (no copy)."""

    def __init__(self, tasks: Mapping[str, TaskRun], specs: Mapping[str, TaskSpec]) -> None:
        self._tasks = tasks
        self._specs = specs

    def __getitem__(self, task_id: str) -> Any:
        task = self._tasks.get(task_id) if task_id in self._specs else None
        if task is None or task.state is not TaskState.SUCCEEDED:
            raise KeyError(task_id)
        return task.output

    def __iter__(self) -> Iterator[str]:
        return (t for t in self._specs if self._tasks[t].state is TaskState.SUCCEEDED)

    def __len__(self) -> int:
        return sum(1 for _ in self)
