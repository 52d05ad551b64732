"""Creating tenants and keys, and the first-start bootstrap."""

from __future__ import annotations

from datetime import datetime

from openautoglm.core.clock import Clock
from openautoglm.core.errors import ConflictError, NotFoundError
from openautoglm.core.ids import new_object_id
from openautoglm.tenancy.keys import generate_secret, hash_secret, visible_prefix
from openautoglm.tenancy.model import ApiKey, IssuedKey, Role, Tenant
from openautoglm.tenancy.ports import TenancyStore

DEFAULT_TENANT = "default"


class TenancyService:
    """Tenant and key operations over a ``TenancyStore``."""

    def __init__(self, store: TenancyStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def create_tenant(self, name: str) -> Tenant:
        tenant = Tenant(id=new_object_id("ten"), name=name, created_at=self._clock.now())
        await self._store.add_tenant(tenant)
        return tenant

    async def issue_key(
        self,
        tenant_name: str,
        role: Role,
        *,
        name: str = "",
        allowed_models: tuple[str, ...] | None = None,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """Create a key for the named tenant; the secret is returned once and never stored."""
        tenant = await self._store.tenant_by_name(tenant_name)
        if tenant is None:
            raise NotFoundError(f"tenant '{tenant_name}' does not exist", code="tenant_not_found")
        secret = generate_secret()
        key = ApiKey(
            id=new_object_id("key"),
            tenant_id=tenant.id,
            name=name or f"{role.value} key",
            role=role,
            prefix=visible_prefix(secret),
            key_hash=hash_secret(secret),
            created_at=self._clock.now(),
            allowed_models=allowed_models,
            expires_at=expires_at,
        )
        await self._store.add_key(key)
        return IssuedKey(secret=secret, key=key)

    async def bootstrap(self) -> IssuedKey | None:
        """On a store with no tenants, create the default tenant and a platform-admin key.

        Returns the issued key, or ``None`` when the store was already initialised (also when
        another replica won the race to initialise it).
        """
        if await self._store.count_tenants() > 0:
            return None
        try:
            await self.create_tenant(DEFAULT_TENANT)
        except ConflictError:
            return None
        return await self.issue_key(DEFAULT_TENANT, Role.PLATFORM_ADMIN, name="platform admin")
