"""The rate-limit stage: reserve before the call, settle with the real cost after it.

A request reserves its prompt tokens plus ``max_tokens`` (``DEFAULT_RESERVED_COMPLETION_TOKENS``
when it sets none) in the key's and the tenant's scopes, and is settled with what it really cost:
the backend's usage when it reports one, otherwise an estimate of the prompt and of the text that
was produced — so a stream cut off after ten words is charged ten words.
"""

from __future__ import annotations

import asyncio

from openautoglm.core.types import GenerationRequest, Usage
from openautoglm.limits.model import Lease, LimitScope, LimitSpec
from openautoglm.limits.ports import RateLimiter
from openautoglm.tenancy.model import Principal

DEFAULT_RESERVED_COMPLETION_TOKENS = 1024


def scopes_of(principal: Principal) -> tuple[LimitScope, ...]:
    """The key's and the tenant's limit scopes (only those that have limits)."""
    scopes = []
    if principal.key_limits:
        scopes.append(
            LimitScope(
                name=f"key:{principal.key_id}",
                spec=LimitSpec.from_dict(principal.key_limits),
                label=f"key {principal.key_prefix}…",
            )
        )
    if principal.tenant_limits:
        scopes.append(
            LimitScope(
                name=f"tenant:{principal.tenant_id}",
                spec=LimitSpec.from_dict(principal.tenant_limits),
            )
        )
    return tuple(scopes)


_ScopeKey = tuple[str, str, frozenset[tuple[str, int]], frozenset[tuple[str, int]]]
_MAX_CACHED_SCOPES = 10_000


class RequestLimits:
    """Acquires and settles one request's rate-limit lease."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._scopes: dict[_ScopeKey, tuple[LimitScope, ...]] = {}
        self._returning: set[asyncio.Task[None]] = set()

    def _scopes_of(self, principal: Principal) -> tuple[LimitScope, ...]:
        # Parsing limits costs microseconds per request; they change only when an admin edits them.
        key = (
            principal.key_id,
            principal.tenant_id,
            frozenset((principal.key_limits or {}).items()),
            frozenset((principal.tenant_limits or {}).items()),
        )
        scopes = self._scopes.get(key)
        if scopes is None:
            if len(self._scopes) >= _MAX_CACHED_SCOPES:
                self._scopes.clear()
            scopes = self._scopes[key] = scopes_of(principal)
        return scopes

    async def acquire(
        self, principal: Principal, request: GenerationRequest, prompt_tokens: int
    ) -> Lease | None:
        """Reserve the request's worst-case cost; ``None`` when no limit applies to the caller."""
        completion = request.params.max_tokens or DEFAULT_RESERVED_COMPLETION_TOKENS
        return await self.reserve(principal, prompt_tokens + completion)

    async def reserve(self, principal: Principal, num_tokens: int) -> Lease | None:
        """Reserve ``num_tokens`` (and one request, one concurrency slot) for the caller."""
        if not principal.key_limits and not principal.tenant_limits:
            return None
        scopes = self._scopes_of(principal)
        if not scopes:
            return None
        # If the request is cancelled while the limiter answers (client gone), the limiter may
        # still grant: that lease must be given back, or its slot stays taken until it expires.
        granting = asyncio.ensure_future(self._limiter.acquire(scopes, num_tokens))
        try:
            return await asyncio.shield(granting)
        except asyncio.CancelledError:
            granting.add_done_callback(self._give_back)
            raise

    def _give_back(self, granting: asyncio.Future[Lease]) -> None:
        if granting.cancelled() or granting.exception() is not None:
            return
        task = asyncio.ensure_future(self._limiter.settle(granting.result(), 0))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    async def settle(self, lease: Lease | None, usage: Usage) -> None:
        if lease is not None:
            await self._limiter.settle(lease, usage.total_tokens)

    async def close(self) -> None:
        await self._limiter.close()
