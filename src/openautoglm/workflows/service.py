"""Workflow operations: definitions, starting runs (every trigger comes here), recovery after a
restart, cancellation, approvals and ``retry --from-failed``.

A run is written with all its task runs before the executor sees it, so a crash right after
:meth:`WorkflowService.start` returns loses nothing: :meth:`WorkflowService.recover` admits
every unfinished run on start. Starting is idempotent per ``dedupe_key`` (the store's unique
key): a broker message or a cron slot delivered twice gets the run of the first delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from openautoglm.core.clock import Clock
from openautoglm.core.errors import ConflictError, InvalidRequestError, NotFoundError
from openautoglm.core.ids import new_object_id
from openautoglm.workflows.definition import WorkflowSpec, check_inputs, parse_workflow
from openautoglm.workflows.executor import Executor
from openautoglm.workflows.graph import descendants
from openautoglm.workflows.model import Run, RunState, TaskRun, TaskState, WorkflowStore

logger = logging.getLogger(__name__)


class WorkflowService:
    """The workflows' front door; also the ``RunStarter`` that triggers use."""

    def __init__(
        self, store: WorkflowStore, executor: Executor, clock: Clock, default_priority: int = 5
    ) -> None:
        self.store = store
        self.executor = executor
        self._clock = clock
        self._default_priority = default_priority
        self._specs: dict[tuple[str, int], WorkflowSpec] = {}

    async def close(self) -> None:
        """Stop the executor (running tasks are cancelled and resume on the next start)."""
        await self.executor.close()
        await self.store.close()

    # definitions

    async def apply(
        self, document: Mapping[str, Any], actor: str | None
    ) -> tuple[int, WorkflowSpec]:
        """Validate a definition and store it as the workflow's next version."""
        spec = parse_workflow(document)
        current = await self.store.definition(spec.name)
        if current is not None and parse_workflow(current[1]).as_document() == spec.as_document():
            return current[0], spec  # unchanged: no new version
        version = await self.store.save_definition(spec.name, spec.as_document(), actor)
        self._specs[(spec.name, version)] = spec
        return version, spec

    async def spec(self, name: str, version: int | None = None) -> tuple[int, WorkflowSpec]:
        if version is not None and (name, version) in self._specs:
            return version, self._specs[(name, version)]
        found = await self.store.definition(name, version)
        if found is None:
            suffix = f" version {version}" if version is not None else ""
            raise NotFoundError(f"workflow '{name}'{suffix} not found", code="workflow_not_found")
        spec = parse_workflow(found[1])
        self._specs[(name, found[0])] = spec
        return found[0], spec

    # runs

    async def start(
        self,
        workflow: str,
        inputs: Mapping[str, Any],
        *,
        trigger: str,
        dedupe_key: str | None = None,
        priority: int | None = None,
        deadline: datetime | None = None,
        created_by: str | None = None,
        tenant_id: str | None = None,
    ) -> Run:
        version, spec = await self.spec(workflow)
        checked = check_inputs(spec, inputs)
        if priority is not None and not 0 <= priority <= 9:
            raise InvalidRequestError("priority must be 0-9", param="priority")
        run = Run(
            id=new_object_id("run"),
            workflow=workflow,
            workflow_version=version,
            state=RunState.QUEUED,
            inputs=checked,
            created_at=self._clock.now(),
            priority=self._default_priority if priority is None else priority,
            deadline=deadline,
            trigger=trigger,
            dedupe_key=dedupe_key,
            created_by=created_by,
            tenant_id=tenant_id,
        )
        tasks = [TaskRun(run.id, task.id, TaskState.PENDING) for task in spec.tasks]
        stored = await self.store.create_run(run, tasks)
        if stored.id != run.id:
            return stored  # this event already started a run
        await self.executor.admit(stored, spec, tasks)
        live = self.executor.live(run.id)
        return live.run if live is not None else stored

    async def recover(self) -> int:
        """Admit every unfinished run (after a restart); how many."""
        count = 0
        for run in await self.store.unfinished_runs():
            if self.executor.live(run.id) is not None:
                continue
            _, spec = await self.spec(run.workflow, run.workflow_version)
            await self.executor.admit(run, spec, await self.store.tasks(run.id))
            count += 1
        if count:
            logger.info("resumed %d unfinished workflow runs", count)
        return count

    async def run(self, run_id: str) -> Run:
        live = self.executor.live(run_id)
        if live is not None:
            return live.run
        found = await self.store.get_run(run_id)
        if found is None:
            raise NotFoundError(f"run '{run_id}' not found", code="run_not_found")
        return found

    async def tasks(self, run_id: str) -> list[TaskRun]:
        live = self.executor.live(run_id)
        if live is not None:
            return list(live.tasks.values())
        await self.run(run_id)
        return await self.store.tasks(run_id)

    async def cancel(self, run_id: str) -> Run:
        run = await self.run(run_id)
        if run.state.finished:
            raise ConflictError(f"run {run_id} is already {run.state.value}", code="run_finished")
        if not await self.executor.cancel(run_id):  # not held here: cancel it in the store
            now = self._clock.now()
            stale = [
                replace(task, state=TaskState.CANCELLED, finished_at=now)
                for task in await self.store.tasks(run_id)
                if not task.state.finished
            ]
            cancelled = replace(run, state=RunState.CANCELLED, finished_at=now, error="cancelled")
            await self.store.apply(cancelled, stale)
        return await self.run(run_id)

    async def approve(
        self, run_id: str, task_id: str, approved: bool, actor: str, comment: str | None
    ) -> TaskRun:
        await self.run(run_id)
        decided = await self.executor.resolve_approval(run_id, task_id, approved, actor, comment)
        if decided is None:
            raise ConflictError(
                f"task {task_id} of run {run_id} is not waiting for an approval",
                code="not_waiting",
            )
        return decided

    async def retry_from_failed(self, run_id: str) -> Run:
        """Resume a failed (or cancelled) run from its failed tasks: what succeeded is kept."""
        if self.executor.live(run_id) is not None:
            raise ConflictError(f"run {run_id} is running", code="run_not_failed")
        run = await self.run(run_id)
        if run.state not in (RunState.FAILED, RunState.CANCELLED):
            raise ConflictError(
                f"run {run_id} is {run.state.value}; only failed or cancelled runs are retried",
                code="run_not_failed",
            )
        _, spec = await self.spec(run.workflow, run.workflow_version)
        tasks = {task.task_id: task for task in await self.store.tasks(run_id)}
        again: set[str] = set()
        for task in tasks.values():
            if task.state in (TaskState.FAILED, TaskState.CANCELLED):
                root = task.task_id.split("[", 1)[0]
                again |= {task.task_id, root} | descendants(spec, root)
        reset = [
            TaskRun(
                run_id,
                task_id,
                TaskState.PENDING,
                logs=(
                    (
                        *task.logs,
                        f"retried from failed after {task.attempts} attempts: {task.error}",
                    )
                    if task.attempts
                    else tuple(task.logs)
                ),
            )
            for task_id, task in tasks.items()
            if (task_id in again or task_id.split("[", 1)[0] in again)
            and task.state is not TaskState.SUCCEEDED
        ]
        resumed = replace(run, state=RunState.RUNNING, error=None, finished_at=None, outputs=None)
        await self.store.apply(resumed, reset)
        for task in reset:
            tasks[task.task_id] = task
        await self.executor.admit(resumed, spec, list(tasks.values()))
        return resumed
