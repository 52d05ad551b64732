"""The store port tenancy needs, and its in-memory adapter (for unit tests)."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from openautoglm.core.errors import ConflictError
from openautoglm.tenancy.model import ApiKey, Tenant


class TenancyStore(Protocol):
    """Tenants and key hashes. The SQL adapter lives in ``store.tenancy_sql``."""

    async def add_tenant(self, tenant: Tenant) -> None:
        """Insert; raises ``ConflictError`` if the name is taken."""

    async def tenant_by_name(self, name: str) -> Tenant | None: ...

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None: ...

    async def count_tenants(self) -> int: ...

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant, oldest first."""

    async def save_tenant(self, tenant: Tenant) -> None:
        """Update a tenant's mutable fields (limits, disabled)."""

    async def add_key(self, key: ApiKey) -> None: ...

    async def key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    async def keys_of_tenant(self, tenant_id: str) -> list[ApiKey]: ...

    async def key_by_id(self, tenant_id: str, key_id: str) -> ApiKey | None:
        """The key, only if it belongs to ``tenant_id``."""

    async def save_key(self, key: ApiKey) -> None:
        """Update a key's mutable fields (revocation, expiry, allowed models)."""


class InMemoryTenancyStore:
    """A dict-backed ``TenancyStore``; same contract as the SQL one."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._keys: dict[str, ApiKey] = {}

    async def add_tenant(self, tenant: Tenant) -> None:
        if any(t.name == tenant.name for t in self._tenants.values()):
            raise ConflictError(f"tenant '{tenant.name}' already exists", code="tenant_exists")
        self._tenants[tenant.id] = tenant

    async def tenant_by_name(self, name: str) -> Tenant | None:
        return next((t for t in self._tenants.values() if t.name == name), None)

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self._tenants.get(tenant_id)

    async def count_tenants(self) -> int:
        return len(self._tenants)

    async def list_tenants(self) -> list[Tenant]:
        return sorted(self._tenants.values(), key=lambda t: (t.created_at, t.id))

    async def save_tenant(self, tenant: Tenant) -> None:
        if tenant.id in self._tenants:
            self._tenants[tenant.id] = tenant

    async def add_key(self, key: ApiKey) -> None:
        if key.tenant_id not in self._tenants:
            raise ConflictError(f"tenant '{key.tenant_id}' does not exist", code="tenant_missing")
        self._keys[key.key_hash] = key

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        return self._keys.get(key_hash)

    async def keys_of_tenant(self, tenant_id: str) -> list[ApiKey]:
        keys = [k for k in self._keys.values() if k.tenant_id == tenant_id]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def key_by_id(self, tenant_id: str, key_id: str) -> ApiKey | None:
        return next(
            (k for k in self._keys.values() if k.id == key_id and k.tenant_id == tenant_id), None
        )

    async def save_key(self, key: ApiKey) -> None:
        if key.key_hash in self._keys:
            self._keys[key.key_hash] = replace(key)
