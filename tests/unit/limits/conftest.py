"""Fixtures for the rate-limit tests: every limiter, and a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.unit.limits.redis_support import MakeLimiter, RedisForTest, ensure_redis

from openautoglm.limits import InMemoryRateLimiter


@pytest.fixture
async def redis_for_test() -> AsyncIterator[RedisForTest]:
    await ensure_redis()
    handle = RedisForTest()
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture(params=["memory", "redis", "redis-lean"])
def make_limiter(request: pytest.FixtureRequest) -> MakeLimiter:
    """Builds the limiter under test on a given clock: in memory, or on a real Redis."""
    if request.param == "memory":
        return lambda clock: InMemoryRateLimiter(clock)
    handle: RedisForTest = request.getfixturevalue("redis_for_test")
    if request.param == "redis-lean":
        return lambda clock: handle.lean_limiter(clock)
    return lambda clock: handle.limiter(clock)
