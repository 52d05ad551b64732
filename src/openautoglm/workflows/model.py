"""Workflow runs and task runs: their states, records, and the ports the executor works through.

A run is one execution of a workflow definition with its inputs; each task of the definition
(and each item of a ``map`` task, as ``<map id>[<index>]``) has one task run. Every state change
is committed to the store before the executor acts on it.

Task states: ``pending`` (waiting for its dependencies) → ``running`` → ``succeeded`` | ``failed``
| ``retrying`` (a failed attempt, waiting for its next one) | ``waiting`` (an approval) |
``skipped`` (a branch did not choose it, or a dependency was skipped) | ``cancelled``. Run states:
``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``.

The idempotency key of a task run is ``<run id>/<task id>``: the same for every attempt, and for
the attempt that is retried after a crash, so a task with side effects can make them once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.SKIPPED,
            TaskState.CANCELLED,
        )


class StoreUnavailableError(Exception):
    """The store could not be reached or could not commit; the write may be tried again."""


def idempotency_key(run_id: str, task_id: str) -> str:
    """The key a task's side effects are deduplicated by, the same for every attempt."""
    return f"{run_id}/{task_id}"


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    workflow: str
    workflow_version: int
    state: RunState
    inputs: Mapping[str, Any]
    created_at: datetime
    priority: int = 5
    deadline: datetime | None = None
    trigger: str = "manual"
    dedupe_key: str | None = None
    created_by: str | None = None
    tenant_id: str | None = None
    outputs: Mapping[str, Any] | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskRun:
    run_id: str
    task_id: str
    state: TaskState
    attempts: int = 0
    output: Any = None
    error: str | None = None
    error_class: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    logs: Sequence[str] = field(default_factory=tuple)

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.run_id, self.task_id)


class WorkflowStore(Protocol):
    """Where definitions, runs and task runs are kept (``store/workflows_sql.py``)."""

    async def save_definition(
        self, name: str, document: Mapping[str, Any], actor: str | None
    ) -> int:
        """Store a new version of a definition; its version number."""
        ...

    async def definition(
        self, name: str, version: int | None = None
    ) -> tuple[int, Mapping[str, Any]] | None: ...

    async def definitions(self) -> list[tuple[str, int, datetime]]: ...

    async def create_run(self, run: Run, tasks: Sequence[TaskRun]) -> Run:
        """Store a run with its task runs; with a ``dedupe_key`` already used, the existing run
        is returned and nothing is written."""
        ...

    async def apply(
        self,
        run: Run | None = None,
        tasks: Sequence[TaskRun] = (),
        new_tasks: Sequence[TaskRun] = (),
    ) -> None:
        """Write a run's new state, task runs' new states and new task runs (a map's items) in
        one transaction."""
        ...

    async def apply_many(
        self, runs: Sequence[Run], tasks: Sequence[TaskRun], new_tasks: Sequence[TaskRun]
    ) -> None:
        """``apply`` for several runs at once (the executor's group commits)."""
        ...

    async def get_run(self, run_id: str) -> Run | None: ...

    async def tasks(self, run_id: str) -> list[TaskRun]: ...

    async def runs(
        self,
        workflow: str | None = None,
        state: RunState | None = None,
        limit: int = 100,
        tenant_id: str | None = None,
    ) -> list[Run]:
        """Newest first; ``tenant_id``: only that tenant's runs."""
        ...

    async def unfinished_runs(self) -> list[Run]: ...

    async def close(self) -> None: ...


class RunStarter(Protocol):
    """What triggers need: start a run, at most once per ``dedupe_key``."""

    async def start(
        self,
        workflow: str,
        inputs: Mapping[str, Any],
        *,
        trigger: str,
        dedupe_key: str | None = None,
        priority: int | None = None,
        deadline: datetime | None = None,
    ) -> Run: ...
