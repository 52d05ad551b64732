"""SQL adapter of ``tenancy.ports.TenancyStore`` (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from openautoglm.core.errors import ConflictError
from openautoglm.store.database import shielded, write_transaction
from openautoglm.store.tables import api_keys, tenants
from openautoglm.store.times import aware
from openautoglm.tenancy.model import ApiKey, LimitValues, Permission, Role, Tenant


def _join(names: tuple[str, ...] | None) -> str | None:
    return None if names is None else "\n".join(names)


def _split(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(name for name in text.split("\n") if name)


def _dump_limits(limits: Mapping[str, int] | None) -> str | None:
    return None if limits is None else orjson.dumps(dict(limits)).decode()


def _load_limits(text: str | None) -> LimitValues | None:
    return None if text is None else dict(orjson.loads(text))


def _tenant(row: Any) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        created_at=aware(row.created_at) or row.created_at,
        limits=_load_limits(row.limits),
        disabled_at=aware(row.disabled_at),
    )


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        role=Role(row.role),
        prefix=row.prefix,
        key_hash=row.key_hash,
        created_at=aware(row.created_at) or row.created_at,
        allowed_models=_split(row.allowed_models),
        expires_at=aware(row.expires_at),
        revoked_at=aware(row.revoked_at),
        allowed_regions=_split(row.allowed_regions),
        limits=_load_limits(row.limits),
        created_by=row.created_by,
        permissions=frozenset(Permission(p) for p in orjson.loads(row.permissions or "[]")),
    )


def _key_values(key: ApiKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "allowed_models": _join(key.allowed_models),
        "allowed_regions": _join(key.allowed_regions),
        "limits": _dump_limits(key.limits),
        "permissions": orjson.dumps(sorted(key.permissions)).decode() if key.permissions else None,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }


class SqlTenancyStore:
    """Tenants and keys in the relational store; each call is its own transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @shielded
    async def add_tenant(self, tenant: Tenant) -> None:
        try:
            async with write_transaction(self._engine) as connection:
                await connection.execute(
                    insert(tenants).values(
                        id=tenant.id,
                        name=tenant.name,
                        created_at=tenant.created_at,
                        limits=_dump_limits(tenant.limits),
                        disabled_at=tenant.disabled_at,
                    )
                )
        except IntegrityError as exc:
            raise ConflictError(
                f"tenant '{tenant.name}' already exists", code="tenant_exists"
            ) from exc

    @shielded
    async def tenant_by_name(self, name: str) -> Tenant | None:
        return await self._one_tenant(tenants.c.name == name)

    @shielded
    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return await self._one_tenant(tenants.c.id == tenant_id)

    async def _one_tenant(self, condition: Any) -> Tenant | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(tenants).where(condition))).first()
        return None if row is None else _tenant(row)

    @shielded
    async def count_tenants(self) -> int:
        async with self._engine.connect() as connection:
            count = await connection.scalar(select(func.count()).select_from(tenants))
        return int(count or 0)

    @shielded
    async def list_tenants(self) -> list[Tenant]:
        query = select(tenants).order_by(tenants.c.created_at, tenants.c.id)
        async with self._engine.connect() as connection:
            return [_tenant(row) for row in (await connection.execute(query)).all()]

    @shielded
    async def save_tenant(self, tenant: Tenant) -> None:
        async with write_transaction(self._engine) as connection:
            await connection.execute(
                update(tenants)
                .where(tenants.c.id == tenant.id)
                .values(limits=_dump_limits(tenant.limits), disabled_at=tenant.disabled_at)
            )

    @shielded
    async def add_key(self, key: ApiKey) -> None:
        try:
            async with write_transaction(self._engine) as connection:
                await connection.execute(
                    insert(api_keys).values(
                        id=key.id,
                        tenant_id=key.tenant_id,
                        role=key.role.value,
                        prefix=key.prefix,
                        key_hash=key.key_hash,
                        created_at=key.created_at,
                        created_by=key.created_by,
                        **_key_values(key),
                    )
                )
        except IntegrityError as exc:
            raise ConflictError(
                f"cannot store key for tenant '{key.tenant_id}': {exc.orig}", code="key_conflict"
            ) from exc

    @shielded
    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        return await self._one_key(api_keys.c.key_hash == key_hash)

    @shielded
    async def key_by_id(self, tenant_id: str, key_id: str) -> ApiKey | None:
        return await self._one_key((api_keys.c.id == key_id) & (api_keys.c.tenant_id == tenant_id))

    async def _one_key(self, condition: Any) -> ApiKey | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(api_keys).where(condition))).first()
        return None if row is None else _key(row)

    @shielded
    async def keys_of_tenant(self, tenant_id: str) -> list[ApiKey]:
        query = (
            select(api_keys)
            .where(api_keys.c.tenant_id == tenant_id)
            .order_by(api_keys.c.created_at, api_keys.c.id)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_key(row) for row in rows]

    @shielded
    async def save_key(self, key: ApiKey) -> None:
        async with write_transaction(self._engine) as connection:
            await connection.execute(
                update(api_keys).where(api_keys.c.id == key.id).values(**_key_values(key))
            )
