"""Counting a key's policy violations within a window (in memory, or shared through Redis)."""

from __future__ import annotations

from collections import deque
from typing import Protocol

from redis.asyncio import Redis

from openautoglm.core.clock import Clock


class ViolationCounter(Protocol):
    async def add(self, key_id: str, window_s: int) -> int:
        """Count one violation; return how many fall within the last ``window_s`` seconds."""
        ...

    async def reset(self, key_id: str) -> None: ...


class InMemoryViolationCounter:
    """A sliding window per key, in this process."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    async def add(self, key_id: str, window_s: int) -> int:
        now = self._clock.monotonic()
        events = self._events.setdefault(key_id, deque())
        events.append(now)
        while events and events[0] <= now - window_s:
            events.popleft()
        return len(events)

    async def reset(self, key_id: str) -> None:
        self._events.pop(key_id, None)


class RedisViolationCounter:
    """A sliding window per key in a Redis sorted set, shared by every replica."""

    def __init__(self, redis: Redis, clock: Clock, prefix: str = "autoglm:violations:") -> None:
        self._redis = redis
        self._clock = clock
        self._prefix = prefix
        self._serial = 0

    async def add(self, key_id: str, window_s: int) -> int:
        now = self._clock.now().timestamp()
        self._serial += 1
        name = self._prefix + key_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(name, {f"{now:.6f}:{id(self)}:{self._serial}": now})
            pipe.zremrangebyscore(name, "-inf", now - window_s)
            pipe.zcard(name)
            pipe.expire(name, window_s + 1)
            results = await pipe.execute()
        return int(results[2])

    async def reset(self, key_id: str) -> None:
        await self._redis.delete(self._prefix + key_id)
