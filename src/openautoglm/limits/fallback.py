"""A limiter that prefers a shared one (Redis) and falls back to a local one during an outage.

Invariants: a Redis outage (``ConnectionError`` / ``TimeoutError``) never fails a request — it is
served by the local limiter, which enforces the limits per replica (so N replicas allow up to N×)
until the primary answers again; the outage is logged once as a warning when it starts and once
as info when it ends; while it lasts, the primary is retried at most once per ``retry_after_s``
(by the clock's monotonic time); a lease is always settled by the limiter that granted it.
A limit refusal by the primary is an answer, not an outage: it is raised as is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from openautoglm.core.clock import Clock
from openautoglm.limits.model import Lease, LimitScope
from openautoglm.limits.ports import RateLimiter

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError)

logger = logging.getLogger(__name__)


class FallbackRateLimiter:
    """``primary`` while it answers, ``fallback`` while it does not; same contract as both."""

    def __init__(
        self,
        primary: RateLimiter,
        fallback: RateLimiter,
        clock: Clock,
        *,
        retry_after_s: float = 5.0,
        name: str = "fallback",
    ) -> None:
        if primary.name == fallback.name:
            raise ValueError(
                f"primary and fallback limiters need distinct names, both are '{primary.name}'"
            )
        self._primary = primary
        self._fallback = fallback
        self._clock = clock
        self._retry_after_s = retry_after_s
        self._name = name
        self._retry_primary_at: float | None = None  # monotonic s; None while the primary is up

    @property
    def name(self) -> str:
        """Names this wrapper; its leases carry the name of the limiter that granted them."""
        return self._name

    @property
    def is_degraded(self) -> bool:
        """True while the primary is considered down and requests go to the fallback."""
        return self._retry_primary_at is not None

    async def acquire(self, scopes: Sequence[LimitScope], reserve_tokens: int) -> Lease:
        """The primary's answer, or the fallback's while the primary is unreachable."""
        if self._retry_primary_at is None or self._clock.monotonic() >= self._retry_primary_at:
            try:
                lease = await self._primary.acquire(scopes, reserve_tokens)
            except OUTAGE_ERRORS as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return lease
        return await self._fallback.acquire(scopes, reserve_tokens)

    async def settle(self, lease: Lease, used_tokens: int) -> None:
        """Settle with the limiter that granted ``lease``.

        If the primary is unreachable the settlement is lost: its tokens stay charged at the
        reservation (an overcharge, never an undercharge) and its concurrency slot frees itself
        after the primary's lease TTL.
        """
        if lease.issuer == self._fallback.name:
            await self._fallback.settle(lease, used_tokens)
            return
        try:
            await self._primary.settle(lease, used_tokens)
        except OUTAGE_ERRORS as exc:
            self._mark_down(exc)

    async def close(self) -> None:
        """Close both limiters."""
        try:
            await self._primary.close()
        finally:
            await self._fallback.close()

    def _mark_down(self, exc: Exception) -> None:
        if self._retry_primary_at is None:
            logger.warning(
                "rate limiter '%s' is unreachable (%s: %s); using the local limiter '%s' "
                "(limits hold per replica) and retrying every %.0f s",
                self._primary.name,
                type(exc).__name__,
                exc,
                self._fallback.name,
                self._retry_after_s,
            )
        self._retry_primary_at = self._clock.monotonic() + self._retry_after_s

    def _mark_up(self) -> None:
        if self._retry_primary_at is not None:
            logger.info("rate limiter '%s' is reachable again", self._primary.name)
            self._retry_primary_at = None
