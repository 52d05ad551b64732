"""Which failures move a call to another instance (retry) or to another model (fallback).

Only failures before the first byte reached the client are retried: ``Gateway.open_stream``
returns after the first chunk, so everything it catches is still invisible to the client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from openautoglm.core.errors import (
    BackendFailure,
    DeadlineExceededError,
    ModelNotFoundError,
    OpenAutoGLMError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from openautoglm.core.types import Chunk
from openautoglm.gateway.guarding import BudgetExceeded
from openautoglm.limits.checks import RateLimitExceeded
from openautoglm.scheduling.slot import Slot

# Failures that say something about the instance: they count for its breaker and are retried.
INSTANCE_FAILURES = frozenset({"unavailable", "upstream", "timeout", "backend"})


def failure_class(exc: BaseException) -> str | None:
    """``unavailable``, ``upstream``, ``timeout``, ``backend``, ``rate_limited`` or None (the
    caller's fault, a policy, our own limits or deadline: never retried, never a fallback)."""
    if not isinstance(exc, OpenAutoGLMError) or isinstance(exc, BudgetExceeded):
        return None
    if isinstance(exc, DeadlineExceededError):
        return "timeout"
    if isinstance(exc, ServiceUnavailableError):
        return "unavailable"
    if isinstance(exc, UpstreamError):
        return "upstream"
    if isinstance(exc, BackendFailure):
        return "backend"
    if isinstance(exc, RateLimitError) and not isinstance(exc, RateLimitExceeded):
        return "rate_limited"  # the upstream's 429, not ours
    return None


async def releasing(stream: AsyncGenerator[Chunk, None], slot: Slot) -> AsyncGenerator[Chunk, None]:
    """``stream``, giving the scheduler's slot back however it ends."""
    finished = False
    try:
        async for chunk in stream:
            yield chunk
        finished = True
    finally:
        try:
            await stream.aclose()
        finally:
            slot.release(ok=finished)


def hidden(exc: OpenAutoGLMError) -> bool:
    """A fallback the caller may not use (unknown to its key, or outside its regions)."""
    return isinstance(exc, ModelNotFoundError) or (
        isinstance(exc, PermissionDeniedError) and exc.code == "region_not_allowed"
    )
