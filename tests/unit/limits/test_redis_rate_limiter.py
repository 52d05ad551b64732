"""Redis specifics: replicas share one limit exactly (not 2×), keys expire, scripts reload."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from tests.unit.limits.redis_support import RedisForTest

from openautoglm.core.clock import ManualClock
from openautoglm.limits import Lease, LimitScope, LimitSpec, RateLimitExceeded, RedisRateLimiter

NOON = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)


async def _try(limiter: RedisRateLimiter, scopes: list[LimitScope], tokens: int) -> Lease | None:
    try:
        return await limiter.acquire(scopes, tokens)
    except RateLimitExceeded:
        return None


async def test_two_replicas_allow_exactly_60_of_100_concurrent_requests(
    redis_for_test: RedisForTest,
) -> None:
    clock = ManualClock(NOON)
    replicas = [redis_for_test.limiter(clock), redis_for_test.limiter(clock)]
    scopes = [LimitScope("key:key_abc", LimitSpec(requests_per_minute=60))]
    results = await asyncio.gather(*(_try(replicas[i % 2], scopes, 0) for i in range(100)))
    granted = [lease for lease in results if lease is not None]
    assert len(granted) == 60
    assert len({lease.id for lease in granted}) == 60


async def test_two_replicas_share_tokens_and_concurrency(redis_for_test: RedisForTest) -> None:
    clock = ManualClock(NOON)
    replicas = [redis_for_test.limiter(clock), redis_for_test.limiter(clock)]
    spec = LimitSpec(tokens_per_minute=1000, max_concurrent=7)
    scopes = [LimitScope("key:key_abc", spec), LimitScope("tenant:ten_x", spec)]
    results = await asyncio.gather(*(_try(replicas[i % 2], scopes, 100) for i in range(40)))
    granted = [lease for lease in results if lease is not None]
    assert len(granted) == 7
    # a lease granted by one replica is settled by the other
    await asyncio.gather(*(replicas[1].settle(lease, 10) for lease in granted))
    results = await asyncio.gather(*(_try(replicas[i % 2], scopes, 100) for i in range(40)))
    assert sum(lease is not None for lease in results) == 7  # 930 tokens left: 9, slots: 7


async def test_keys_expire_after_their_window(redis_for_test: RedisForTest) -> None:
    clock = ManualClock(NOON.replace(second=48))
    limiter = redis_for_test.limiter(clock)
    spec = LimitSpec(
        requests_per_minute=5, tokens_per_minute=100, max_concurrent=1, tokens_per_day=1000
    )
    lease = await limiter.acquire([LimitScope("key:k", spec)], 10)
    client = redis_for_test.client()
    ttl_s = {
        key.decode().removeprefix(redis_for_test.prefix): await client.pttl(key) / 1000
        for key in [k async for k in client.scan_iter(match=f"{redis_for_test.prefix}*")]
    }
    minute = int(clock.now().timestamp() // 60)
    assert ttl_s.pop(f"key:k:rpm:{minute}") == pytest.approx(72, abs=1)  # 12 s left + 60
    assert ttl_s.pop(f"key:k:tpm:{minute}") == pytest.approx(72, abs=1)
    assert ttl_s.pop("key:k:tpd:2026-03-10") == pytest.approx(12 * 3600 - 48 + 60, abs=1)
    assert ttl_s.pop("key:k:conc") == pytest.approx(900 + 60, abs=1)
    assert ttl_s.pop(f"lease:{lease.id}") == pytest.approx(86_400, abs=1)
    assert ttl_s == {}
    await limiter.settle(lease, 5)
    assert await client.pttl(f"{redis_for_test.prefix}key:k:tpm:{minute}") > 70_000  # kept


async def test_scripts_are_reloaded_after_a_script_flush(redis_for_test: RedisForTest) -> None:
    clock = ManualClock(NOON)
    limiter = redis_for_test.limiter(clock)
    scopes = [LimitScope("key:k", LimitSpec(requests_per_minute=2))]
    lease = await limiter.acquire(scopes, 0)
    await redis_for_test.client().script_flush()  # as after a Redis restart: EVALSHA fails
    await limiter.settle(lease, 0)
    await limiter.acquire(scopes, 0)
    with pytest.raises(RateLimitExceeded):
        await limiter.acquire(scopes, 0)
