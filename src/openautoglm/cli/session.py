"""Store access for CLI commands: the same ``TenancyAdmin`` the API uses, acting as the operator.

Whoever can run the CLI against the database already holds every key to it, so commands act
as a platform admin (``cli-operator``). Changes are announced on Redis when it is configured, so
running replicas drop cached keys at once; without Redis they notice within a second. Every
change made here is also an audit event (kind ``admin``, endpoint ``CLI <action>``).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from openautoglm.audit.model import AuditRecord
from openautoglm.config.settings import Settings
from openautoglm.core.clock import SystemClock
from openautoglm.core.ids import new_object_id
from openautoglm.policy.ports import PolicyVersion
from openautoglm.store.audit_sql import SqlAuditStore
from openautoglm.store.database import open_database
from openautoglm.store.tenancy_sql import SqlTenancyStore
from openautoglm.tenancy.admin import TenancyAdmin
from openautoglm.tenancy.auth import Authenticator
from openautoglm.tenancy.key_events import LocalKeyEvents, RedisKeyEvents
from openautoglm.tenancy.model import ApiKey, IssuedKey, Principal, Role, Tenant

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


def _detail_of(result: object) -> dict[str, Any]:
    if isinstance(result, IssuedKey):
        result = result.key
    if isinstance(result, ApiKey):
        return {"key_id": result.id, "tenant_id": result.tenant_id, "role": result.role.value}
    if isinstance(result, Tenant):
        return {"tenant_id": result.id, "name": result.name}
    if isinstance(result, PolicyVersion):
        return {"scope": result.scope, "version": result.version, "digest": result.digest}
    return {}


async def audit_cli_action(settings: Settings, action: str, result: object) -> None:
    """Append the audit event of an admin action done with the CLI (as ``cli-operator``)."""
    if not settings.audit.enabled:
        return
    engine = await open_database(settings.resolved_database_url)
    try:
        record = AuditRecord(
            request_id=new_object_id("cli"),
            occurred_at=datetime.now(UTC),
            kind="admin",
            endpoint=f"CLI {action}",
            status=200,
            tenant_id=OPERATOR.tenant_id or None,
            key_id=OPERATOR.key_id,
            role=OPERATOR.role.value,
            action=action,
            client_ip=socket.gethostname(),
            detail=_detail_of(result),
        )
        await SqlAuditStore(engine).append([record])
    finally:
        await engine.dispose()
