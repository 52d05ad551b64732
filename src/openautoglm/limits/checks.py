"""The decision every backend shares: which counters a request touches, and what their values mean.

A backend only stores counters. For one ``acquire`` it reads the current value of every counter in
the plan (:func:`plan_checks`) and, in one atomic step, either adds every ``amount`` or none. The
rule it applies is :func:`is_exceeded`; the Redis Lua script mirrors it line for line. Everything
that follows from the values read — the refusal, the lease, the header status — is computed here,
so both backends answer alike.

Invariants: a request is refused when any limit of any scope would be exceeded, and a refused
request consumes nothing; a request that could never pass (it alone exceeds a limit) is refused
before any counter is read, without a ``retry_after_s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from openautoglm.core.errors import RateLimitError
from openautoglm.limits.model import (
    Lease,
    LimitKind,
    LimitScope,
    LimitUsage,
    RateLimitStatus,
)
from openautoglm.limits.windows import current_windows

KEY_MARGIN_S = 60.0
"""Counters outlive their window by this much, so a late settle still finds them."""

LEASE_RECORD_TTL_S = 86_400.0
"""How long an unsettled lease can still be settled; a later settle changes nothing."""

CONCURRENCY_RETRY_S = 1.0
"""A concurrency slot frees when some request ends, which no window predicts: a short hint."""

TOKEN_KINDS = frozenset(
    {LimitKind.TOKENS_PER_MINUTE, LimitKind.TOKENS_PER_DAY, LimitKind.TOKENS_PER_MONTH}
)


class RateLimitExceeded(RateLimitError):
    """A refusal by the limiter, with the data for the 429 body and OpenAI's headers.

    ``retry_after_s`` is ``None`` when waiting cannot help (the request alone exceeds a limit);
    ``limit_status`` holds the current numbers for ``ratelimit_headers`` (``status`` is the HTTP
    status, 429, as on every ``OpenAutoGLMError``).
    """

    def __init__(
        self,
        message: str,
        *,
        scope: LimitScope,
        kind: LimitKind,
        limit: int,
        used: int,
        requested: int,
        retry_after_s: float | None,
        limit_status: RateLimitStatus,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.scope = scope
        self.kind = kind
        self.limit = limit
        self.used = used
        self.requested = requested
        self.limit_status = limit_status


@dataclass(frozen=True, slots=True)
class Check:
    """One counter of one scope that a request must fit into.

    ``key`` is relative to the backend's prefix. For :attr:`LimitKind.CONCURRENT_REQUESTS` the
    counter is a set of lease ids, each expiring ``ttl_s`` after it was taken, and ``resets_at_s``
    is ``None``.
    """

    scope: LimitScope
    kind: LimitKind
    key: str
    limit: int
    amount: int
    resets_at_s: float | None
    ttl_s: float

    @property
    def is_slot(self) -> bool:
        """True for the concurrency check, whose counter is a set of leases."""
        return self.kind is LimitKind.CONCURRENT_REQUESTS


@dataclass(frozen=True, slots=True)
class Plan:
    """The checks of one ``acquire`` and the instant they were planned at."""

    now_s: float
    checks: tuple[Check, ...]
    reserve_tokens: int
    scopes: tuple[LimitScope, ...]


def plan_checks(
    scopes: Sequence[LimitScope], reserve_tokens: int, now: datetime, lease_ttl_s: float
) -> Plan:
    """The counters one request touches, in scope order; raises if it could never pass."""
    if reserve_tokens < 0:
        raise ValueError(f"reserve_tokens must not be negative, got {reserve_tokens}")
    names = [scope.name for scope in scopes]
    if len(set(names)) != len(names):
        raise ValueError(f"limit scopes must have distinct names, got {names}")
    w = current_windows(now)
    checks: list[Check] = []
    for scope in scopes:
        spec = scope.spec
        windows = (
            (LimitKind.REQUESTS_PER_MINUTE, spec.requests_per_minute, 1, f"rpm:{w.minute_id}",
             w.minute_ends_s),
            (LimitKind.TOKENS_PER_MINUTE, spec.tokens_per_minute, reserve_tokens,
             f"tpm:{w.minute_id}", w.minute_ends_s),
            (LimitKind.TOKENS_PER_DAY, spec.tokens_per_day, reserve_tokens, f"tpd:{w.day_id}",
             w.day_ends_s),
            (LimitKind.TOKENS_PER_MONTH, spec.tokens_per_month, reserve_tokens,
             f"tpmo:{w.month_id}", w.month_ends_s),
        )  # fmt: skip
        for kind, limit, amount, suffix, ends_s in windows:
            if limit is not None:
                ttl_s = ends_s - w.now_s + KEY_MARGIN_S
                checks.append(
                    Check(scope, kind, f"{scope.name}:{suffix}", limit, amount, ends_s, ttl_s)
                )
        if spec.max_concurrent is not None:
            checks.append(
                Check(
                    scope,
                    LimitKind.CONCURRENT_REQUESTS,
                    concurrency_key(scope.name),
                    spec.max_concurrent,
                    1,
                    None,
                    lease_ttl_s,
                )
            )
    plan = Plan(w.now_s, tuple(checks), reserve_tokens, tuple(scopes))
    _refuse_if_too_large(plan)
    return plan


def is_exceeded(limit: int, value: int, amount: int) -> bool:
    """The one rule: adding ``amount`` to ``value`` must not go past ``limit``."""
    return value + amount > limit


def refusal(plan: Plan, values: Sequence[int]) -> RateLimitExceeded | None:
    """The error for a plan whose counters read ``values``, or ``None`` if it fits.

    ``retry_after_s`` is the smallest wait after which every exceeded window has reset: the
    latest reset among them.
    """
    exceeded = [
        (check, value)
        for check, value in zip(plan.checks, values, strict=True)
        if is_exceeded(check.limit, value, check.amount)
    ]
    if not exceeded:
        return None
    check, value = max(exceeded, key=lambda cv: _retry_after_s(plan.now_s, cv[0]))
    retry_after_s = _retry_after_s(plan.now_s, check)
    wait = (
        "retry when a running request finishes"
        if check.is_slot
        else f"retry in {math.ceil(retry_after_s)} s"
    )
    requested = f", requested {check.amount}" if check.kind in TOKEN_KINDS else ""
    message = (
        f"Rate limit reached for {check.scope.display_name} on {check.kind.value}: "
        f"limit {check.limit}, used {value}{requested}; {wait}"
    )
    return RateLimitExceeded(
        message,
        scope=check.scope,
        kind=check.kind,
        limit=check.limit,
        used=value,
        requested=check.amount,
        retry_after_s=retry_after_s,
        limit_status=status_of(plan, values),
    )


def status_of(plan: Plan, values: Sequence[int]) -> RateLimitStatus:
    """Requests and tokens per minute of the scope with the least remaining, at ``values``."""
    requests: list[LimitUsage] = []
    tokens: list[LimitUsage] = []
    for check, value in zip(plan.checks, values, strict=True):
        if check.kind is LimitKind.REQUESTS_PER_MINUTE:
            requests.append(_usage(plan.now_s, check, value))
        elif check.kind is LimitKind.TOKENS_PER_MINUTE:
            tokens.append(_usage(plan.now_s, check, value))
    return RateLimitStatus(
        requests=min(requests, key=_tightness, default=None),
        tokens=min(tokens, key=_tightness, default=None),
    )


def grant(plan: Plan, values_before: Sequence[int], lease_id: str, issuer: str) -> Lease:
    """The lease for a plan that was applied to counters that read ``values_before``."""
    after = [value + check.amount for check, value in zip(plan.checks, values_before, strict=True)]
    return Lease(
        id=lease_id,
        scopes=plan.scopes,
        reserved_tokens=plan.reserve_tokens,
        token_counters=tuple(c.key for c in plan.checks if c.kind in TOKEN_KINDS),
        concurrency_scopes=tuple(c.scope.name for c in plan.checks if c.is_slot),
        status=status_of(plan, after),
        issuer=issuer,
    )


def concurrency_key(scope_name: str) -> str:
    """The key of a scope's concurrency set (as :func:`plan_checks` names it)."""
    return f"{scope_name}:conc"


def _usage(now_s: float, check: Check, value: int) -> LimitUsage:
    return LimitUsage(
        limit=check.limit,
        remaining=max(0, check.limit - value),
        reset_s=_retry_after_s(now_s, check),
    )


def _tightness(usage: LimitUsage) -> tuple[int, int]:
    return (usage.remaining, usage.limit)


def _retry_after_s(now_s: float, check: Check) -> float:
    if check.resets_at_s is None:
        return CONCURRENCY_RETRY_S
    return max(0.0, check.resets_at_s - now_s)


def _refuse_if_too_large(plan: Plan) -> None:
    for check in plan.checks:
        if check.amount > check.limit:
            raise RateLimitExceeded(
                f"Request too large for {check.scope.display_name} on {check.kind.value}: "
                f"limit {check.limit}, requested {check.amount}; "
                "lower max_tokens or shorten the prompt"
                if check.kind in TOKEN_KINDS
                else f"Rate limit reached for {check.scope.display_name} on "
                f"{check.kind.value}: limit {check.limit}",
                scope=check.scope,
                kind=check.kind,
                limit=check.limit,
                used=0,
                requested=check.amount,
                retry_after_s=None,
                limit_status=RateLimitStatus(),
            )
