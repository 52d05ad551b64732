"""Functions the workflow tests run as ``python`` tasks (``tests.support.workflow_tasks:add``).

The server imports them by name, as it would after a restart, so they live at module level.
"""

from __future__ import annotations

from openautoglm.workflows.context import TaskContext


def add(ctx: TaskContext, a: int, b: int) -> int:
    """The sum of two inputs."""
    return a + b


def fail(ctx: TaskContext) -> None:
    """Always fails, the same way on every attempt."""
    raise RuntimeError("deliberate failure")


def greet(ctx: TaskContext, name: str) -> str:
    """A greeting for ``name``."""
    return f"hello {name}"
