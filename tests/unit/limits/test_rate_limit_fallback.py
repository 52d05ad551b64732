"""Redis outages degrade to the local limiter, logged once, and recover."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from tests.unit.limits.redis_support import REDIS_URL, RedisForTest

from openautoglm.core.clock import ManualClock
from openautoglm.limits import (
    FallbackRateLimiter,
    InMemoryRateLimiter,
    Lease,
    LimitScope,
    LimitSpec,
    RateLimiter,
    RateLimitExceeded,
    RedisRateLimiter,
    build_rate_limiter,
)

NOON = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
LOGGER = "openautoglm.limits.fallback"
SCOPES = [LimitScope("key:key_abc", LimitSpec(requests_per_minute=100, max_concurrent=2))]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SwitchableLimiter:
    """Wraps a limiter; while ``is_down`` every call fails as an unreachable Redis would."""

    def __init__(self, inner: RateLimiter) -> None:
        self.inner = inner
        self.is_down = False
        self.calls = 0

    @property
    def name(self) -> str:
        return self.inner.name

    async def acquire(self, scopes: Sequence[LimitScope], reserve_tokens: int) -> Lease:
        self._maybe_fail()
        return await self.inner.acquire(scopes, reserve_tokens)

    async def settle(self, lease: Lease, used_tokens: int) -> None:
        self._maybe_fail()
        await self.inner.settle(lease, used_tokens)

    async def close(self) -> None:
        await self.inner.close()

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.is_down:
            raise RedisConnectionError(
                "Error 111 connecting to 127.0.0.1:6379. Connection refused."
            )


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


async def test_an_unreachable_redis_falls_back_to_local_limits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(NOON)
    client = Redis(
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    limiter = FallbackRateLimiter(
        RedisRateLimiter(client, clock, owns_client=True), InMemoryRateLimiter(clock), clock
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        first = await limiter.acquire(SCOPES, 10)
        clock.advance(6)  # past the retry delay: Redis is tried again, and fails quietly
        second = await limiter.acquire(SCOPES, 10)
        with pytest.raises(RateLimitExceeded):  # local limits still hold
            await limiter.acquire(SCOPES, 10)
        await limiter.settle(first, 3)
        await limiter.settle(second, 3)
        await limiter.acquire(SCOPES, 10)
    assert (first.issuer, second.issuer) == ("memory", "memory")
    assert limiter.is_degraded
    [warning] = warnings_in(caplog)
    assert "'redis' is unreachable (ConnectionError" in warning.getMessage()
    await limiter.close()


async def test_the_primary_is_retried_after_a_backoff_and_recovers(
    caplog: pytest.LogCaptureFixture, redis_for_test: RedisForTest
) -> None:
    clock = ManualClock(NOON)
    primary = SwitchableLimiter(redis_for_test.limiter(clock))
    local = InMemoryRateLimiter(clock)
    limiter = FallbackRateLimiter(primary, local, clock, retry_after_s=5)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        before = await limiter.acquire(SCOPES, 10)
        assert before.issuer == "redis"
        primary.is_down = True
        await limiter.settle(before, 5)  # lost, and not raised: the slot expires by itself
        during = [await limiter.acquire(SCOPES, 10) for _ in range(2)]
        assert [lease.issuer for lease in during] == ["memory", "memory"]
        assert primary.calls == 2  # the failed settle marked it down; no acquire tried it
        clock.advance(5)
        await limiter.settle(during[0], 1)  # a local lease is settled locally
        retried = await limiter.acquire(SCOPES, 10)
        assert (retried.issuer, primary.calls) == ("memory", 3)  # tried once more, still down
        await limiter.settle(retried, 1)
        primary.is_down = False
        clock.advance(4.9)
        early = await limiter.acquire(SCOPES, 10)
        assert (early.issuer, primary.calls) == ("memory", 3)  # not due yet
        await limiter.settle(early, 1)
        clock.advance(0.1)
        after = await limiter.acquire(SCOPES, 10)
    assert after.issuer == "redis"
    assert not limiter.is_degraded
    assert len(warnings_in(caplog)) == 1
    assert any("reachable again" in r.getMessage() for r in caplog.records if r.name == LOGGER)
    # leases from the outage still settle locally, releasing local slots
    await limiter.settle(during[1], 1)
    with pytest.raises(RateLimitExceeded):  # redis: 'before' was never released, 'after' holds
        await limiter.acquire(SCOPES, 10)


async def test_a_refusal_by_the_primary_is_not_an_outage(redis_for_test: RedisForTest) -> None:
    clock = ManualClock(NOON)
    limiter = FallbackRateLimiter(redis_for_test.limiter(clock), InMemoryRateLimiter(clock), clock)
    scopes = [LimitScope("key:key_abc", LimitSpec(requests_per_minute=1))]
    await limiter.acquire(scopes, 0)
    with pytest.raises(RateLimitExceeded):
        await limiter.acquire(scopes, 0)
    assert not limiter.is_degraded


def test_primary_and_fallback_need_distinct_names() -> None:
    clock = ManualClock(NOON)
    with pytest.raises(ValueError, match="distinct names"):
        FallbackRateLimiter(InMemoryRateLimiter(clock), InMemoryRateLimiter(clock), clock)


async def test_the_factory_builds_memory_or_redis_with_fallback(
    redis_for_test: RedisForTest,
) -> None:
    clock = ManualClock(NOON)
    assert isinstance(build_rate_limiter(None, clock), InMemoryRateLimiter)
    limiter = build_rate_limiter(REDIS_URL, clock, key_prefix=redis_for_test.prefix)
    assert isinstance(limiter, FallbackRateLimiter)
    lease = await limiter.acquire(SCOPES, 10)
    assert lease.issuer == "redis"
    await limiter.settle(lease, 1)
    await limiter.close()
    down = build_rate_limiter(f"redis://127.0.0.1:{closed_port()}/0", clock)
    assert (await down.acquire(SCOPES, 10)).issuer == "memory"
    await down.close()
