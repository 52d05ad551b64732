"""The rate-limiter port and its in-process adapter.

Use: ``lease = await limiter.acquire(scopes, prompt_tokens + max_tokens)`` before calling the
model, then ``await limiter.settle(lease, used_tokens)`` exactly once it is over — in a
``finally``, whatever happened. ``used_tokens`` is what the request really cost: prompt plus the
completion tokens produced, also when a stream was cut off or the backend failed midway; a request
that failed before the model saw it is settled with 0. Settling twice does nothing the second time.

Invariant (every adapter): ``acquire`` checks all limits of all scopes and then consumes in all of
them, or raises :class:`~openautoglm.limits.checks.RateLimitExceeded` and consumes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from openautoglm.core.clock import Clock
from openautoglm.core.ids import RequestIds
from openautoglm.limits.checks import (
    LEASE_RECORD_TTL_S,
    Check,
    concurrency_key,
    grant,
    plan_checks,
    refusal,
)
from openautoglm.limits.model import Lease, LimitScope

DEFAULT_LEASE_TTL_S = 900.0
"""A concurrency slot not released by then (a crashed replica) frees itself."""

SWEEP_INTERVAL_S = 60.0


class RateLimiter(Protocol):
    """Checks and consumes rate limits and quotas for a request, then settles its real cost."""

    @property
    def name(self) -> str:
        """Names this limiter in the leases it grants (``Lease.issuer``)."""

    async def acquire(self, scopes: Sequence[LimitScope], reserve_tokens: int) -> Lease:
        """Take one request, ``reserve_tokens`` tokens and a concurrency slot in every scope.

        Raises ``RateLimitExceeded`` (a ``RateLimitError``) naming the limit and scope, with the
        smallest sufficient ``retry_after_s``, and consumes nothing, if any limit would be
        exceeded. ``lease.status`` holds the numbers for the ``x-ratelimit-*`` headers.
        """

    async def settle(self, lease: Lease, used_tokens: int) -> None:
        """Charge ``used_tokens`` instead of the reservation and release the concurrency slot.

        Adjusts the token windows the lease charged (never below zero) and is idempotent.
        """

    async def close(self) -> None:
        """Release connections this limiter owns."""


class InMemoryRateLimiter:
    """Counters in dicts, for one process. Sync code on one event loop, so each call is atomic."""

    def __init__(
        self, clock: Clock, *, lease_ttl_s: float = DEFAULT_LEASE_TTL_S, name: str = "memory"
    ) -> None:
        self._clock = clock
        self._lease_ttl_s = lease_ttl_s
        self._name = name
        self._ids = RequestIds()
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires_at_s)
        self._slots: dict[str, dict[str, float]] = {}  # key -> lease id -> expires_at_s
        self._open_leases: dict[str, float] = {}  # lease id -> settle-by (s)
        self._next_sweep_s = 0.0

    @property
    def name(self) -> str:
        """Names this limiter in the leases it grants."""
        return self._name

    async def acquire(self, scopes: Sequence[LimitScope], reserve_tokens: int) -> Lease:
        """See :meth:`RateLimiter.acquire`."""
        plan = plan_checks(scopes, reserve_tokens, self._clock.now(), self._lease_ttl_s)
        now_s = plan.now_s
        self._sweep(now_s)
        values = [self._read(check, now_s) for check in plan.checks]
        error = refusal(plan, values)
        if error is not None:
            raise error
        lease_id = self._ids.next()
        for check in plan.checks:
            self._consume(check, lease_id, now_s)
        if plan.checks:
            self._open_leases[lease_id] = now_s + LEASE_RECORD_TTL_S
        return grant(plan, values, lease_id, self._name)

    async def settle(self, lease: Lease, used_tokens: int) -> None:
        """See :meth:`RateLimiter.settle`."""
        if used_tokens < 0:
            raise ValueError(f"used_tokens must not be negative, got {used_tokens}")
        now_s = self._clock.now().timestamp()
        settle_by = self._open_leases.pop(lease.id, None)
        if settle_by is None or settle_by <= now_s:
            return
        delta = used_tokens - lease.reserved_tokens
        for key in lease.token_counters:
            entry = self._counters.get(key)
            if entry is not None and entry[1] > now_s:
                self._counters[key] = (max(0, entry[0] + delta), entry[1])
        for scope_name in lease.concurrency_scopes:
            self._slots.get(concurrency_key(scope_name), {}).pop(lease.id, None)

    async def close(self) -> None:
        """Nothing to release."""

    def _read(self, check: Check, now_s: float) -> int:
        if check.is_slot:
            slots = self._slots.get(check.key, {})
            return sum(1 for expires_s in slots.values() if expires_s > now_s)
        entry = self._counters.get(check.key)
        return entry[0] if entry is not None and entry[1] > now_s else 0

    def _consume(self, check: Check, lease_id: str, now_s: float) -> None:
        expires_s = now_s + check.ttl_s
        if check.is_slot:
            self._slots.setdefault(check.key, {})[lease_id] = expires_s
            return
        value = self._read(check, now_s)
        self._counters[check.key] = (value + check.amount, expires_s)

    def _sweep(self, now_s: float) -> None:
        """Forget expired windows, slots and leases, at most once a minute of clock time."""
        if now_s < self._next_sweep_s:
            return
        self._next_sweep_s = now_s + SWEEP_INTERVAL_S
        self._counters = {k: e for k, e in self._counters.items() if e[1] > now_s}
        for key, slots in list(self._slots.items()):
            live = {lease_id: s for lease_id, s in slots.items() if s > now_s}
            if live:
                self._slots[key] = live
            else:
                del self._slots[key]
        self._open_leases = {k: s for k, s in self._open_leases.items() if s > now_s}
