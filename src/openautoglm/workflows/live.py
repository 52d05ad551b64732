"""What the executor holds per run while it is unfinished, and its timers."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from openautoglm.workflows.flow import Flow
from openautoglm.workflows.model import Run, TaskRun

MAX_LOG_LINES = 1000
MAX_LOG_CHARS = 2000


@dataclass
class Settled:
    """Changes a worker still has to commit, and the tasks they make ready (released only
    after the commit); ``end``: the run ended with these changes."""

    live: LiveRun
    writes: list[TaskRun]
    ready: list[str]
    end: bool = False


@dataclass
class LiveRun:
    """A run the executor holds in memory while it is unfinished."""

    run: Run
    flow: Flow
    tasks: dict[str, TaskRun]
    running: dict[str, asyncio.Task[Settled | None]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    logs: dict[str, list[str]] = field(default_factory=dict)  # this attempt's lines, per task

    def logger(self, task_id: str) -> Callable[[str], None]:
        """``ctx.log`` for a task: lines kept with the task's next stored state."""
        lines = self.logs.setdefault(task_id, [])

        def log(line: str) -> None:
            if len(lines) < MAX_LOG_LINES:
                lines.append(str(line)[:MAX_LOG_CHARS])

        return log

    def take_logs(self, task: TaskRun, *extra: str) -> tuple[str, ...]:
        """The task's stored lines plus this attempt's (and ``extra``), newest last."""
        return (*task.logs, *self.logs.pop(task.task_id, ()), *extra)[-MAX_LOG_LINES:]

    @property
    def order(self) -> tuple[int, float]:
        deadline = self.run.deadline.timestamp() if self.run.deadline else math.inf
        return self.run.priority, deadline


class Timers:
    """Tasks that wait for a moment on the clock: retries (``next_attempt_at``) and approvals
    (their deadline)."""

    def __init__(self) -> None:
        self._retries: list[tuple[datetime, int, str, str]] = []
        self._approvals: list[tuple[datetime, int, str, str]] = []
        self._seq = itertools.count()

    def retry_at(self, at: datetime, run_id: str, task_id: str) -> None:
        heapq.heappush(self._retries, (at, next(self._seq), run_id, task_id))

    def approval_until(self, at: datetime, run_id: str, task_id: str) -> None:
        heapq.heappush(self._approvals, (at, next(self._seq), run_id, task_id))

    def due_retries(self, now: datetime) -> list[tuple[str, str]]:
        return self._pop(self._retries, now)

    def due_approvals(self, now: datetime) -> list[tuple[str, str]]:
        return self._pop(self._approvals, now)

    @staticmethod
    def _pop(heap: list[tuple[datetime, int, str, str]], now: datetime) -> list[tuple[str, str]]:
        due = []
        while heap and heap[0][0] <= now:
            _, _, run_id, task_id = heapq.heappop(heap)
            due.append((run_id, task_id))
        return due
