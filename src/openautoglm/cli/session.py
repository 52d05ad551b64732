"""Store access for CLI commands: the same ``TenancyAdmin`` the API uses, acting as the operator.

Whoever can run the CLI against the database already holds every key to it, so commands act
as a platform admin (``cli-operator``). Changes are announced on Redis when it is configured, so
running replicas drop cached keys at once; without Redis they notice within a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from openautoglm.config.settings import Settings
from openautoglm.core.clock import SystemClock
from openautoglm.store.database import open_database
from openautoglm.store.tenancy_sql import SqlTenancyStore
from openautoglm.tenancy.admin import TenancyAdmin
from openautoglm.tenancy.auth import Authenticator
from openautoglm.tenancy.key_events import LocalKeyEvents, RedisKeyEvents
from openautoglm.tenancy.model import Principal, Role

OPERATOR = Principal(tenant_id="", key_id="cli-operator", role=Role.PLATFORM_ADMIN)


@asynccontextmanager
async def admin_session(settings: Settings) -> AsyncIterator[TenancyAdmin]:
    """A ``TenancyAdmin`` over the configured store, closed on exit."""
    engine = await open_database(settings.resolved_database_url)
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    try:
        clock = SystemClock()
        store = SqlTenancyStore(engine)
        authenticator = Authenticator(store, clock)
        events = RedisKeyEvents(authenticator, redis) if redis else LocalKeyEvents(authenticator)
        yield TenancyAdmin(store, clock, events)
    finally:
        if redis is not None:
            await redis.aclose()
        await engine.dispose()
