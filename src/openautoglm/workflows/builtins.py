"""Small callables for ``python`` tasks: ``openautoglm.workflows.builtins:<name>``."""

from __future__ import annotations

from typing import Any


async def noop(ctx: Any, **args: Any) -> None:
    """Do nothing (placeholders, benchmarks)."""
    return None


async def echo(ctx: Any, **args: Any) -> dict[str, Any]:
    """Return the task's arguments (after templating): handy to shape data between tasks."""
    return dict(args)
