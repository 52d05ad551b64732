"""Telling every replica that a key or tenant changed, so cached answers are dropped at once.

``LocalKeyEvents`` serves one process. ``RedisKeyEvents`` also publishes on a Redis channel that
every replica subscribes to; a replica that loses the subscription drops its whole cache when it
reconnects (it may have missed events). Without either, the authenticator's refresh interval
(1 s) bounds how long another replica may accept a revoked key.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from openautoglm.tenancy.auth import Authenticator

logger = logging.getLogger(__name__)
CHANNEL = "autoglm:auth:invalidate"
_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class LocalKeyEvents:
    """Invalidates this process's authentication cache."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def key_changed(self, key_hash: str) -> None:
        self._authenticator.invalidate(key_hash)

    async def tenant_changed(self, tenant_id: str) -> None:
        self._authenticator.invalidate_tenant(tenant_id)

    def apply(self, message: str) -> None:
        """Act on a published message: ``key:<hash>`` or ``tenant:<id>``."""
        kind, _, value = message.partition(":")
        if kind == "key":
            self._authenticator.invalidate(value)
        elif kind == "tenant":
            self._authenticator.invalidate_tenant(value)


class RedisKeyEvents(LocalKeyEvents):
    """Invalidates locally and on every replica through Redis pub/sub."""

    def __init__(self, authenticator: Authenticator, redis: Redis, retry_s: float = 1.0) -> None:
        super().__init__(authenticator)
        self._redis = redis
        self._retry_s = retry_s
        self.subscribed = asyncio.Event()

    async def key_changed(self, key_hash: str) -> None:
        await super().key_changed(key_hash)
        await self._publish(f"key:{key_hash}")

    async def tenant_changed(self, tenant_id: str) -> None:
        await super().tenant_changed(tenant_id)
        await self._publish(f"tenant:{tenant_id}")

    async def _publish(self, message: str) -> None:
        try:
            await self._redis.publish(CHANNEL, message)
        except _REDIS_ERRORS as exc:
            logger.warning(
                "could not announce %s on Redis (%s); other replicas see it within 1 s",
                message,
                exc,
            )

    async def listen(self) -> None:
        """Apply other replicas' announcements until cancelled; reconnects after failures."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._authenticator.invalidate()  # events may have been missed meanwhile
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message["data"]
                            self.apply(data.decode() if isinstance(data, bytes) else str(data))
            except _REDIS_ERRORS as exc:
                self.subscribed.clear()
                logger.warning("Redis key events lost (%s); retrying in %.0f s", exc, self._retry_s)
                await asyncio.sleep(self._retry_s)
