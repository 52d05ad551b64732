"""Workflow tasks with side effects, for the durability tests: each writes its idempotency key to
a log once (a repeat with the same key writes nothing) and notes every execution."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import Any


def effect(ctx: Any, log: str, seconds: float = 0.0) -> str:
    """Append ``ctx.idempotency_key`` to ``log`` unless it is there already, then nap."""
    path = Path(log)
    with open(path.with_suffix(".executions"), "a", encoding="utf-8") as executions:
        executions.write(ctx.idempotency_key + "\n")
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        if ctx.idempotency_key not in handle.read().split():
            handle.write(ctx.idempotency_key + "\n")
            handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)
    time.sleep(seconds)
    return str(ctx.idempotency_key)


def noop(ctx: Any, **inputs: Any) -> dict[str, Any]:
    """Do nothing; return the inputs (broker-triggered runs)."""
    return dict(inputs)
