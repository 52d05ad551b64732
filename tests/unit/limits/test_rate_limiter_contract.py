"""One contract for every ``RateLimiter``: in memory and on a real Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tests.unit.limits.redis_support import MakeLimiter

from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import RateLimitError
from openautoglm.limits import (
    LimitKind,
    LimitScope,
    LimitSpec,
    LimitUsage,
    RateLimiter,
    RateLimitExceeded,
    RateLimitStatus,
)

NOON_48 = datetime(2026, 3, 10, 12, 0, 48, tzinfo=UTC)  # 12 s before the minute ends


def key(label: str | None = None, **limits: int) -> LimitScope:
    return LimitScope("key:key_abc", LimitSpec(**limits), label=label)


def tenant(**limits: int) -> LimitScope:
    return LimitScope("tenant:ten_x", LimitSpec(**limits))


async def refused(
    limiter: RateLimiter, scopes: list[LimitScope], tokens: int = 0
) -> RateLimitExceeded:
    with pytest.raises(RateLimitExceeded) as caught:
        await limiter.acquire(scopes, tokens)
    return caught.value


async def test_exactly_n_requests_pass_in_a_window(make_limiter: MakeLimiter) -> None:
    clock = ManualClock(NOON_48)
    limiter = make_limiter(clock)
    scopes = [key(label="key sk-agl-abc…", requests_per_minute=60)]
    passed = 0
    for _ in range(70):
        try:
            lease = await limiter.acquire(scopes, 0)
        except RateLimitExceeded:
            continue
        passed += 1
        await limiter.settle(lease, 0)
    assert passed == 60
    error = await refused(limiter, scopes)
    assert isinstance(error, RateLimitError)
    assert error.status == 429
    assert error.kind is LimitKind.REQUESTS_PER_MINUTE
    assert (error.limit, error.used, error.retry_after_s) == (60, 60, 12.0)
    assert error.message == (
        "Rate limit reached for key sk-agl-abc… on requests per minute: "
        "limit 60, used 60; retry in 12 s"
    )


async def test_the_next_window_starts_from_zero(make_limiter: MakeLimiter) -> None:
    clock = ManualClock(NOON_48)
    limiter = make_limiter(clock)
    scopes = [key(requests_per_minute=2)]
    await limiter.acquire(scopes, 0)
    await limiter.acquire(scopes, 0)
    clock.advance(11.5)
    assert (await refused(limiter, scopes)).retry_after_s == pytest.approx(0.5)
    clock.advance(0.5)  # 12:01:00, a new window
    await limiter.acquire(scopes, 0)
    await limiter.acquire(scopes, 0)
    assert (await refused(limiter, scopes)).retry_after_s == pytest.approx(60.0)


async def test_a_reservation_that_would_exceed_tpm_is_refused(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    scopes = [key(tokens_per_minute=1000)]
    await limiter.acquire(scopes, 600)
    error = await refused(limiter, scopes, 500)
    assert (error.kind, error.used, error.requested) == (LimitKind.TOKENS_PER_MINUTE, 600, 500)
    assert "limit 1000, used 600, requested 500; retry in 12 s" in error.message
    lease = await limiter.acquire(scopes, 400)
    assert lease.status.tokens == LimitUsage(limit=1000, remaining=0, reset_s=12.0)


async def test_settle_charges_what_was_really_used(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    scopes = [key(tokens_per_minute=1000)]
    lease = await limiter.acquire(scopes, 100)
    assert lease.reserved_tokens == 100
    await limiter.settle(lease, 7)  # a stream cut off after 7 tokens
    await refused(limiter, scopes, 994)
    assert (await limiter.acquire(scopes, 993)).status.tokens.remaining == 0  # type: ignore[union-attr]


async def test_settle_above_the_reservation_charges_the_extra(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    scopes = [key(tokens_per_minute=1000, tokens_per_day=5000)]
    lease = await limiter.acquire(scopes, 100)
    await limiter.settle(lease, 150)
    probe = await limiter.acquire(scopes, 0)
    assert probe.status.tokens.remaining == 850  # type: ignore[union-attr]


async def test_settle_is_idempotent(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    scopes = [key(tokens_per_minute=1000, max_concurrent=1)]
    lease = await limiter.acquire(scopes, 100)
    await limiter.settle(lease, 7)
    await limiter.settle(lease, 7)
    await limiter.settle(lease, 0)
    other = await limiter.acquire(scopes, 0)  # the slot was released once
    await limiter.settle(lease, 0)  # and settling the old lease again does not free other's
    await refused(limiter, scopes)
    await limiter.settle(other, 0)
    assert (await limiter.acquire(scopes, 993)).status.tokens.remaining == 0  # type: ignore[union-attr]


async def test_settle_never_goes_below_zero(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    scopes = [key(tokens_per_minute=1000)]
    lease = await limiter.acquire(scopes, 100)
    other = await limiter.acquire(scopes, 50)
    await limiter.settle(other, 0)
    await limiter.settle(lease, 0)
    with pytest.raises(ValueError, match="negative"):
        await limiter.settle(lease, -1)
    assert (await limiter.acquire(scopes, 1000)).status.tokens.remaining == 0  # type: ignore[union-attr]


async def test_settle_after_the_window_ended_leaves_the_new_window_alone(
    make_limiter: MakeLimiter,
) -> None:
    clock = ManualClock(NOON_48)
    limiter = make_limiter(clock)
    scopes = [key(tokens_per_minute=1000)]
    lease = await limiter.acquire(scopes, 900)
    clock.advance(30)
    await limiter.settle(lease, 1000)
    assert (await limiter.acquire(scopes, 1000)).status.tokens.remaining == 0  # type: ignore[union-attr]


async def test_concurrency_limit_and_release(make_limiter: MakeLimiter) -> None:
    clock = ManualClock(NOON_48)
    limiter = make_limiter(clock)
    scopes = [key(label="key sk-agl-abc…", max_concurrent=2)]
    first = await limiter.acquire(scopes, 0)
    await limiter.acquire(scopes, 0)  # never settled: a crashed replica
    assert first.took_concurrency_slot
    error = await refused(limiter, scopes)
    assert (error.kind, error.limit, error.used, error.retry_after_s) == (
        LimitKind.CONCURRENT_REQUESTS,
        2,
        2,
        1.0,
    )
    assert error.message.endswith(
        "concurrent requests: limit 2, used 2; retry when a running request finishes"
    )
    await limiter.settle(first, 0)
    third = await limiter.acquire(scopes, 0)
    await refused(limiter, scopes)
    clock.advance(900)  # the leaked lease expires; third is as old, so it expires too
    await limiter.acquire(scopes, 0)
    await limiter.acquire(scopes, 0)
    await limiter.settle(third, 0)  # late settle of an expired slot is harmless
    await refused(limiter, scopes)


async def test_daily_quota_spans_minute_windows_and_resets_at_utc_midnight(
    make_limiter: MakeLimiter,
) -> None:
    clock = ManualClock(datetime(2026, 3, 10, 23, 58, 0, tzinfo=UTC))
    limiter = make_limiter(clock)
    scopes = [key(tokens_per_minute=2000, tokens_per_day=1000)]
    await limiter.settle(await limiter.acquire(scopes, 450), 400)
    clock.advance(60)
    await limiter.settle(await limiter.acquire(scopes, 500), 500)
    clock.advance(30)  # 23:59:30
    error = await refused(limiter, scopes, 200)
    assert (error.kind, error.used, error.retry_after_s) == (LimitKind.TOKENS_PER_DAY, 900, 30.0)
    await limiter.acquire(scopes, 100)
    clock.advance(30)  # 00:00:00 the next day
    await limiter.acquire(scopes, 500)


async def test_monthly_quota_survives_days_and_resets_on_the_first(
    make_limiter: MakeLimiter,
) -> None:
    clock = ManualClock(datetime(2026, 2, 27, 12, 0, 0, tzinfo=UTC))
    limiter = make_limiter(clock)
    scopes = [tenant(tokens_per_day=800, tokens_per_month=1000)]
    await limiter.acquire(scopes, 600)
    clock.advance(86_400)  # Feb 28: a new day, the same month
    error = await refused(limiter, scopes, 500)
    assert error.kind is LimitKind.TOKENS_PER_MONTH
    assert error.retry_after_s == 12 * 3600  # Mar 1 00:00 UTC
    await limiter.acquire(scopes, 400)
    clock.advance(12 * 3600)
    await limiter.acquire(scopes, 800)


async def test_a_tenant_limit_blocks_even_when_the_key_is_fine(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    the_key = key(requests_per_minute=3, tokens_per_minute=1000)
    the_tenant = tenant(requests_per_minute=1, tokens_per_minute=5000, max_concurrent=5)
    await limiter.acquire([the_key, the_tenant], 400)
    error = await refused(limiter, [the_key, the_tenant], 200)
    assert (error.scope, error.kind) == (the_tenant, LimitKind.REQUESTS_PER_MINUTE)
    assert error.message.startswith("Rate limit reached for tenant ten_x on requests per minute")
    # the refusal consumed nothing: the key still has 2 requests and 600 tokens
    await limiter.acquire([the_key], 300)
    lease = await limiter.acquire([the_key], 300)
    assert lease.status == RateLimitStatus(
        requests=LimitUsage(limit=3, remaining=0, reset_s=12.0),
        tokens=LimitUsage(limit=1000, remaining=0, reset_s=12.0),
    )


async def test_a_refusal_in_one_scope_consumes_nothing_in_any(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    the_key = key(tokens_per_minute=1000, tokens_per_day=10_000, max_concurrent=1)
    the_tenant = tenant(tokens_per_minute=500)
    await limiter.acquire([the_tenant], 400)
    await refused(limiter, [the_key, the_tenant], 200)
    lease = await limiter.acquire([the_key], 1000)  # no tokens and no slot were taken
    assert lease.status.tokens.remaining == 0  # type: ignore[union-attr]


async def test_retry_after_is_the_latest_reset_among_exceeded_limits(
    make_limiter: MakeLimiter,
) -> None:
    clock = ManualClock(datetime(2026, 3, 10, 23, 0, 30, tzinfo=UTC))
    limiter = make_limiter(clock)
    scopes = [key(tokens_per_minute=100, tokens_per_day=150)]
    await limiter.acquire(scopes, 100)
    error = await refused(limiter, scopes, 10)
    assert (error.kind, error.retry_after_s) == (LimitKind.TOKENS_PER_MINUTE, 30.0)
    clock.advance(30)
    await limiter.acquire(scopes, 50)
    error = await refused(limiter, scopes, 10)  # tpm is fine for 10; only the day is spent
    assert (error.kind, error.retry_after_s) == (LimitKind.TOKENS_PER_DAY, 3540.0)
    await limiter.acquire([key(tokens_per_minute=100)], 40)
    error = await refused(limiter, scopes, 80)  # both exceeded: wait for the later, midnight
    assert (error.kind, error.retry_after_s) == (LimitKind.TOKENS_PER_DAY, 3540.0)


async def test_status_reports_the_most_constraining_scope(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    scopes = [
        key(requests_per_minute=60, tokens_per_minute=1000),
        tenant(requests_per_minute=10, tokens_per_minute=5000),
    ]
    lease = await limiter.acquire(scopes, 100)
    assert lease.status == RateLimitStatus(
        requests=LimitUsage(limit=10, remaining=9, reset_s=12.0),
        tokens=LimitUsage(limit=1000, remaining=900, reset_s=12.0),
    )
    await limiter.settle(lease, 30)
    for _ in range(9):
        await limiter.acquire(scopes, 0)
    error = await refused(limiter, scopes)
    assert error.limit_status == RateLimitStatus(
        requests=LimitUsage(limit=10, remaining=0, reset_s=12.0),
        tokens=LimitUsage(limit=1000, remaining=970, reset_s=12.0),
    )


async def test_a_request_larger_than_a_limit_is_refused_without_retry(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    scopes = [key(tokens_per_minute=1000)]
    error = await refused(limiter, scopes, 1001)
    assert error.retry_after_s is None
    assert error.message.startswith("Request too large for key key_abc on tokens per minute")
    assert (await limiter.acquire(scopes, 1000)).status.tokens.remaining == 0  # type: ignore[union-attr]
    error = await refused(limiter, [tenant(requests_per_minute=0)])
    assert (error.kind, error.retry_after_s) == (LimitKind.REQUESTS_PER_MINUTE, None)


async def test_unlimited_scopes_grant_without_counting(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    lease = await limiter.acquire([key(), tenant()], 10**9)
    assert lease.status == RateLimitStatus()
    assert (lease.token_counters, lease.concurrency_scopes) == ((), ())
    await limiter.settle(lease, 10**9)
    assert (await limiter.acquire([], 5)).scopes == ()


async def test_bad_arguments_are_refused(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ManualClock(NOON_48))
    with pytest.raises(ValueError, match="negative"):
        await limiter.acquire([key(requests_per_minute=1)], -1)
    with pytest.raises(ValueError, match="distinct names"):
        await limiter.acquire([key(requests_per_minute=1), key(tokens_per_minute=1)], 0)
    await limiter.close()
