"""Tenant and key administration, with the role checks every admin action needs.

Rules, each enforced here (so the API and the CLI cannot differ):
- only a platform admin creates, changes or lists all tenants;
- admins manage keys of their own tenant; platform admins of any tenant;
- nobody issues a key of a higher role than their own;
- another tenant's tenant or key is answered "not found", never "forbidden".
Every change that affects authentication is announced through ``KeyEvents`` so that every
replica drops its cached answer at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

from openautoglm.core.clock import Clock
from openautoglm.core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from openautoglm.core.ids import new_object_id
from openautoglm.limits.model import LimitSpec
from openautoglm.tenancy.keys import generate_secret, hash_secret, visible_prefix
from openautoglm.tenancy.model import ApiKey, IssuedKey, Permission, Principal, Role, Tenant
from openautoglm.tenancy.ports import TenancyStore


class KeyEvents(Protocol):
    """Announces changes that invalidate cached authentication answers."""

    async def key_changed(self, key_hash: str) -> None: ...

    async def tenant_changed(self, tenant_id: str) -> None: ...


def checked_limits(limits: Mapping[str, int] | None, where: str) -> dict[str, int] | None:
    """Validate a limits mapping (``requests_per_minute`` …) or raise a 400 naming it."""
    if limits is None:
        return None
    try:
        return LimitSpec.from_dict(limits).to_dict()
    except ValueError as exc:
        raise InvalidRequestError(f"invalid {where}: {exc}", param=where) from exc


class TenancyAdmin:
    """Admin actions on tenants and keys, on behalf of an authenticated ``actor``."""

    def __init__(self, store: TenancyStore, clock: Clock, events: KeyEvents) -> None:
        self._store = store
        self._clock = clock
        self._events = events

    # tenants

    async def create_tenant(
        self, actor: Principal, name: str, limits: Mapping[str, int] | None = None
    ) -> Tenant:
        _require_platform_admin(actor)
        tenant = Tenant(
            id=new_object_id("ten"),
            name=name,
            created_at=self._clock.now(),
            limits=checked_limits(limits, "limits"),
        )
        await self._store.add_tenant(tenant)
        return tenant

    async def list_tenants(self, actor: Principal) -> list[Tenant]:
        if actor.role is Role.PLATFORM_ADMIN:
            return await self._store.list_tenants()
        return [await self.get_tenant(actor, actor.tenant_id)]

    async def get_tenant(self, actor: Principal, tenant_id: str) -> Tenant:
        tenant = await self._store.tenant_by_id(tenant_id) if actor.acts_in(tenant_id) else None
        if tenant is None:
            raise NotFoundError(f"tenant '{tenant_id}' not found", code="tenant_not_found")
        return tenant

    async def tenant_named(self, actor: Principal, name: str) -> Tenant:
        tenant = await self._store.tenant_by_name(name)
        if tenant is None or not actor.acts_in(tenant.id):
            raise NotFoundError(f"tenant '{name}' not found", code="tenant_not_found")
        return tenant

    async def update_tenant(
        self,
        actor: Principal,
        tenant_id: str,
        *,
        limits: Mapping[str, int] | None = None,
        clear_limits: bool = False,
        disabled: bool | None = None,
    ) -> Tenant:
        _require_platform_admin(actor)
        tenant = await self.get_tenant(actor, tenant_id)
        if clear_limits:
            tenant = replace(tenant, limits=None)
        elif limits is not None:
            tenant = replace(tenant, limits=checked_limits(limits, "limits"))
        if disabled is not None:
            tenant = replace(tenant, disabled_at=self._clock.now() if disabled else None)
        await self._store.save_tenant(tenant)
        await self._events.tenant_changed(tenant.id)
        return tenant

    # keys

    async def issue_key(
        self,
        actor: Principal,
        tenant_id: str,
        role: Role,
        *,
        name: str = "",
        allowed_models: tuple[str, ...] | None = None,
        allowed_regions: tuple[str, ...] | None = None,
        limits: Mapping[str, int] | None = None,
        expires_at: datetime | None = None,
        permissions: frozenset[Permission] = frozenset(),
    ) -> IssuedKey:
        """Create a key; the secret is returned once and never stored. A key may only be
        granted permissions its issuer holds."""
        _require_key_manager(actor)
        missing = sorted(p.value for p in permissions if not actor.holds(p))
        if missing:
            raise PermissionDeniedError(
                f"a key cannot grant permissions it does not hold: {', '.join(missing)}",
                code="permission_not_held",
            )
        tenant = await self.get_tenant(actor, tenant_id)
        if role.rank > actor.role.rank:
            raise PermissionDeniedError(
                f"a {actor.role.value} key cannot issue {role.value} keys", code="role_too_high"
            )
        if role is Role.PLATFORM_ADMIN and actor.role is not Role.PLATFORM_ADMIN:
            raise PermissionDeniedError("only platform admins issue platform admin keys")
        now = self._clock.now()
        if expires_at is not None and expires_at <= now:
            raise InvalidRequestError("expires_at must be in the future", param="expires_at")
        secret = generate_secret()
        key = ApiKey(
            id=new_object_id("key"),
            tenant_id=tenant.id,
            name=name or f"{role.value} key",
            role=role,
            prefix=visible_prefix(secret),
            key_hash=hash_secret(secret),
            created_at=now,
            allowed_models=allowed_models,
            allowed_regions=allowed_regions,
            limits=checked_limits(limits, "limits"),
            expires_at=expires_at,
            created_by=actor.key_id,
            permissions=permissions,
        )
        await self._store.add_key(key)
        return IssuedKey(secret=secret, key=key)

    async def list_keys(self, actor: Principal, tenant_id: str) -> list[ApiKey]:
        _require_key_manager(actor)
        tenant = await self.get_tenant(actor, tenant_id)
        return await self._store.keys_of_tenant(tenant.id)

    async def get_key(self, actor: Principal, tenant_id: str, key_id: str) -> ApiKey:
        _require_key_manager(actor)
        key = await self._store.key_by_id(tenant_id, key_id) if actor.acts_in(tenant_id) else None
        if key is None:
            raise NotFoundError(f"key '{key_id}' not found", code="key_not_found")
        return key

    async def revoke_key(self, actor: Principal, tenant_id: str, key_id: str) -> ApiKey:
        """Revoke at once: this replica forgets the key now, the others on the event."""
        key = await self.get_key(actor, tenant_id, key_id)
        if key.revoked_at is None:
            key = replace(key, revoked_at=self._clock.now())
            await self._store.save_key(key)
        await self._events.key_changed(key.key_hash)
        return key

    async def rotate_key(
        self, actor: Principal, tenant_id: str, key_id: str, grace_s: float = 0
    ) -> IssuedKey:
        """Issue a successor with the same settings; the old key ends after ``grace_s``."""
        old = await self.get_key(actor, tenant_id, key_id)
        if not old.is_active(self._clock.now()):
            raise InvalidRequestError("only an active key can be rotated", code="key_inactive")
        issued = await self.issue_key(
            actor,
            tenant_id,
            old.role,
            name=old.name,
            allowed_models=old.allowed_models,
            allowed_regions=old.allowed_regions,
            limits=old.limits,
            expires_at=old.expires_at,
            permissions=old.permissions,
        )
        if grace_s > 0:
            ends = self._clock.now() + timedelta(seconds=grace_s)
            if old.expires_at is None or old.expires_at > ends:
                await self._store.save_key(replace(old, expires_at=ends))
        else:
            await self._store.save_key(replace(old, revoked_at=self._clock.now()))
        await self._events.key_changed(old.key_hash)
        return issued


def _require_platform_admin(actor: Principal) -> None:
    if actor.role is not Role.PLATFORM_ADMIN:
        raise PermissionDeniedError(
            "only a platform admin key may manage tenants", code="role_forbidden"
        )


def _require_key_manager(actor: Principal) -> None:
    if not actor.role.manages_keys:
        raise PermissionDeniedError(
            f"role '{actor.role.value}' may not manage keys", code="role_forbidden"
        )
