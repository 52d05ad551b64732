"""Key issuing, first-start bootstrap and authentication (with its cache)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from tests.support.databases import database_url

from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import AuthenticationError, NotFoundError
from openautoglm.store.database import open_database
from openautoglm.store.tenancy_sql import SqlTenancyStore
from openautoglm.tenancy.auth import Authenticator
from openautoglm.tenancy.keys import KEY_PREFIX, hash_secret
from openautoglm.tenancy.model import Role
from openautoglm.tenancy.ports import InMemoryTenancyStore
from openautoglm.tenancy.service import DEFAULT_TENANT, TenancyService


class CountingStore(InMemoryTenancyStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def key_by_hash(self, key_hash: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return await super().key_by_hash(key_hash)


async def test_bootstrap_creates_default_tenant_and_admin_key_once() -> None:
    store, clock = InMemoryTenancyStore(), ManualClock()
    service = TenancyService(store, clock)
    issued = await service.bootstrap()
    assert issued is not None and issued.key.role is Role.PLATFORM_ADMIN
    assert issued.secret.startswith(KEY_PREFIX) and len(issued.secret) == len(KEY_PREFIX) + 43
    assert issued.key.key_hash == hash_secret(issued.secret)
    assert issued.secret not in repr(issued.key)
    assert await service.bootstrap() is None
    tenant = await store.tenant_by_name(DEFAULT_TENANT)
    assert tenant is not None and len(await store.keys_of_tenant(tenant.id)) == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_the_secret_is_never_stored(kind: str, tmp_path: Path) -> None:
    async with database_url(kind, tmp_path) as url:
        engine = await open_database(url)
        try:
            service = TenancyService(SqlTenancyStore(engine), ManualClock())
            issued = await service.bootstrap()
            assert issued is not None
            async with engine.connect() as connection:
                rows = (await connection.exec_driver_sql("SELECT * FROM api_keys")).all()
            dumped = repr(rows)
            assert issued.secret not in dumped and issued.secret[-20:] not in dumped
            assert issued.key.key_hash in dumped
        finally:
            await engine.dispose()


async def test_issue_key_for_unknown_tenant_is_404() -> None:
    service = TenancyService(InMemoryTenancyStore(), ManualClock())
    with pytest.raises(NotFoundError):
        await service.issue_key("ghost", Role.DEVELOPER)


async def test_authentication_caches_lookups_and_checks_expiry() -> None:
    store, clock = CountingStore(), ManualClock()
    service = TenancyService(store, clock)
    await service.bootstrap()
    issued = await service.issue_key(
        DEFAULT_TENANT,
        Role.DEVELOPER,
        allowed_models=("echo",),
        expires_at=clock.now() + timedelta(hours=1),
    )
    auth = Authenticator(store, clock, refresh_after_s=5, max_age_s=30)
    principal = await auth.authenticate(issued.secret)
    assert principal.role is Role.DEVELOPER and principal.key_id == issued.key.id
    assert principal.may_use_model("echo") and not principal.may_use_model("glm-4")
    for _ in range(100):
        await auth.authenticate(issued.secret)
    assert store.lookups == 1
    clock.advance(6)  # stale: answered from the cache while one refresh runs behind
    for _ in range(10):
        await auth.authenticate(issued.secret)
    await asyncio.sleep(0)
    assert store.lookups == 2
    clock.advance(31)  # too old to use: the request waits for the store
    await auth.authenticate(issued.secret)
    assert store.lookups == 3
    clock.advance(3600)
    with pytest.raises(AuthenticationError) as expired:
        await auth.authenticate(issued.secret)
    assert expired.value.code == "inactive_api_key"


async def test_unknown_keys_are_refused_and_negative_answers_cached() -> None:
    store, clock = CountingStore(), ManualClock()
    auth = Authenticator(store, clock)
    for secret in (None, "", "not-our-format", KEY_PREFIX + "x" * 300):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(secret)
    assert store.lookups == 0
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(KEY_PREFIX + "unknown")
    assert store.lookups == 1


async def test_invalidate_makes_revocation_immediate() -> None:
    from dataclasses import replace

    store, clock = InMemoryTenancyStore(), ManualClock()
    service = TenancyService(store, clock)
    issued = await service.bootstrap()
    assert issued is not None
    auth = Authenticator(store, clock, refresh_after_s=3600, max_age_s=7200)
    await auth.authenticate(issued.secret)
    await store.save_key(replace(issued.key, revoked_at=clock.now()))
    await auth.authenticate(issued.secret)  # still cached
    auth.invalidate(issued.key.key_hash)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(issued.secret)


class SlowStore(CountingStore):
    """A store whose lookups wait until the test lets them finish."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def key_by_hash(self, key_hash: str):  # type: ignore[no-untyped-def]
        await self.release.wait()
        return await super().key_by_hash(key_hash)


async def test_concurrent_requests_for_one_key_share_one_lookup() -> None:
    store, clock = SlowStore(), ManualClock()
    service = TenancyService(store, clock)
    store.release.set()
    issued = await service.bootstrap()
    assert issued is not None
    store.release.clear()
    store.lookups = 0
    auth = Authenticator(store, clock)
    waiting = [asyncio.create_task(auth.authenticate(issued.secret)) for _ in range(50)]
    await asyncio.sleep(0)
    store.release.set()
    principals = await asyncio.gather(*waiting)
    assert store.lookups == 1
    assert {p.key_id for p in principals} == {issued.key.id}


async def test_a_cancelled_lookup_does_not_fail_the_others() -> None:
    store, clock = SlowStore(), ManualClock()
    service = TenancyService(store, clock)
    store.release.set()
    issued = await service.bootstrap()
    assert issued is not None
    store.release.clear()
    auth = Authenticator(store, clock)
    first = asyncio.create_task(auth.authenticate(issued.secret))
    await asyncio.sleep(0)
    second = asyncio.create_task(auth.authenticate(issued.secret))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    store.release.set()
    assert (await second).key_id == issued.key.id
    with pytest.raises(asyncio.CancelledError):
        await first
