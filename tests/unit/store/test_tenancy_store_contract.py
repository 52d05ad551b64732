"""One contract for every ``TenancyStore``: in memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from tests.support.databases import database_url

from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import ConflictError
from openautoglm.store.database import open_database
from openautoglm.store.tenancy_sql import SqlTenancyStore
from openautoglm.tenancy.model import ApiKey, Role, Tenant
from openautoglm.tenancy.ports import InMemoryTenancyStore, TenancyStore

clock = ManualClock()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TenancyStore]:
    if request.param == "memory":
        yield InMemoryTenancyStore()
        return
    async with database_url(request.param, tmp_path) as url:
        engine = await open_database(url)
        try:
            yield SqlTenancyStore(engine)
        finally:
            await engine.dispose()


def make_key(tenant: Tenant, suffix: str, **changes: object) -> ApiKey:
    key = ApiKey(
        id=f"key_{suffix}",
        tenant_id=tenant.id,
        name=f"key {suffix}",
        role=Role.DEVELOPER,
        prefix=f"sk-agl-{suffix}",
        key_hash=f"{suffix:0>64}",
        created_at=clock.now(),
    )
    return replace(key, **changes)  # type: ignore[arg-type]


async def test_tenants_round_trip_and_names_are_unique(store: TenancyStore) -> None:
    assert await store.count_tenants() == 0
    tenant = Tenant(id="ten_a", name="acme", created_at=clock.now())
    await store.add_tenant(tenant)
    assert await store.tenant_by_name("acme") == tenant
    assert await store.tenant_by_id("ten_a") == tenant
    assert await store.tenant_by_name("nobody") is None
    with pytest.raises(ConflictError):
        await store.add_tenant(Tenant(id="ten_b", name="acme", created_at=clock.now()))
    assert await store.count_tenants() == 1


async def test_keys_round_trip_with_every_field(store: TenancyStore) -> None:
    tenant = Tenant(id="ten_a", name="acme", created_at=clock.now())
    await store.add_tenant(tenant)
    key = make_key(
        tenant,
        "1",
        role=Role.AUDITOR,
        allowed_models=("glm-4", "echo"),
        expires_at=clock.now() + timedelta(days=3),
    )
    await store.add_key(key)
    assert await store.key_by_hash(key.key_hash) == key
    assert await store.key_by_hash("0" * 64) is None
    empty_allow_list = make_key(tenant, "2", allowed_models=())
    await store.add_key(empty_allow_list)
    assert (await store.key_by_hash(empty_allow_list.key_hash)).allowed_models == ()  # type: ignore[union-attr]
    assert [k.id for k in await store.keys_of_tenant("ten_a")] == ["key_1", "key_2"]
    assert await store.keys_of_tenant("ten_other") == []


async def test_saving_a_key_updates_revocation(store: TenancyStore) -> None:
    tenant = Tenant(id="ten_a", name="acme", created_at=clock.now())
    await store.add_tenant(tenant)
    key = make_key(tenant, "1")
    await store.add_key(key)
    revoked = replace(key, revoked_at=clock.now())
    await store.save_key(revoked)
    stored = await store.key_by_hash(key.key_hash)
    assert stored is not None and stored.revoked_at == clock.now()
    assert not stored.is_active(clock.now())


async def test_a_key_needs_an_existing_tenant(store: TenancyStore) -> None:
    orphan = make_key(Tenant(id="ten_missing", name="x", created_at=clock.now()), "1")
    with pytest.raises(ConflictError):
        await store.add_key(orphan)
    assert await store.key_by_hash(orphan.key_hash) is None
