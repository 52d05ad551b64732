"""A real Redis for the rate-limit tests: db 15, a unique key prefix per test, cleaned up after."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from openautoglm.core.clock import Clock
from openautoglm.limits import RateLimiter, RedisRateLimiter
from openautoglm.limits.resp import LeanRedis

REDIS_URL = os.environ.get("AUTOGLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

MakeLimiter = Callable[[Clock], RateLimiter]


def redis_client(url: str = REDIS_URL) -> Redis:
    """A client that fails fast instead of retrying for seconds."""
    return Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=2.0, retry=Retry(NoBackoff(), 0)
    )


async def ensure_redis() -> None:
    """Skip when Redis is unreachable, except in CI (``CI`` set), where that is a failure."""
    client = redis_client()
    try:
        await client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis is not reachable at {REDIS_URL} ({exc}); set AUTOGLM_TEST_REDIS_URL")
    finally:
        await client.aclose()


class RedisForTest:
    """Hands out clients on one test's key prefix and deletes the prefix's keys afterwards."""

    def __init__(self) -> None:
        self.prefix = f"test:rl:{secrets.token_hex(6)}:"
        self._clients: list[Redis] = []
        self._lean: list[LeanRedis] = []

    def client(self) -> Redis:
        client = redis_client()
        self._clients.append(client)
        return client

    def limiter(self, clock: Clock) -> RedisRateLimiter:
        """A limiter with its own client, as one replica would have."""
        return RedisRateLimiter(self.client(), clock, key_prefix=self.prefix)

    def lean_limiter(self, clock: Clock) -> RedisRateLimiter:
        """A limiter on the lean pipelined client the factory uses for ``redis://`` URLs."""
        client = LeanRedis.from_url(REDIS_URL, timeout_s=2.0)
        self._lean.append(client)
        return RedisRateLimiter(client, clock, key_prefix=self.prefix)

    async def close(self) -> None:
        for lean in self._lean:
            await lean.aclose()
        cleaner = self.client()
        keys = [key async for key in cleaner.scan_iter(match=f"{self.prefix}*")]
        if keys:
            await cleaner.delete(*keys)
        for client in self._clients:
            await client.aclose()
