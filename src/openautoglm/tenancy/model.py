"""Tenancy value types: tenants, API keys, roles and the authenticated principal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

# Limits are stored as a mapping of limit name to number (``requests_per_minute`` …); the
# ``limits`` package gives them meaning. Tenancy only keeps them.
LimitValues = Mapping[str, int]


class Permission(StrEnum):
    """Rights granted to a key on top of its role (platform admins hold them all)."""

    APPROVE_MODELS = "approve_models"  # approve a model version for deployment (four eyes)


class Role(StrEnum):
    """What a key may do. ``platform_admin`` manages tenants; the rest act inside one tenant."""

    PLATFORM_ADMIN = "platform_admin"
    ADMIN = "admin"
    OPERATOR = "operator"
    DEVELOPER = "developer"
    AUDITOR = "auditor"

    @property
    def may_infer(self) -> bool:
        """Whether keys of this role may call models (auditors only read)."""
        return self is not Role.AUDITOR

    @property
    def manages_keys(self) -> bool:
        """Whether keys of this role may issue, list, revoke and rotate keys."""
        return self in (Role.PLATFORM_ADMIN, Role.ADMIN)

    @property
    def rank(self) -> int:
        """Privilege order: a key may only issue keys of its own rank or below."""
        return _RANKS[self]


_RANKS = {
    Role.PLATFORM_ADMIN: 4,
    Role.ADMIN: 3,
    Role.OPERATOR: 2,
    Role.DEVELOPER: 1,
    Role.AUDITOR: 1,
}


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: datetime
    limits: LimitValues | None = field(default=None, compare=True)
    disabled_at: datetime | None = None

    @property
    def is_disabled(self) -> bool:
        return self.disabled_at is not None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: never the secret itself, only its SHA-256 and a visible prefix."""

    id: str
    tenant_id: str
    name: str
    role: Role
    prefix: str
    key_hash: str
    created_at: datetime
    allowed_models: tuple[str, ...] | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    allowed_regions: tuple[str, ...] | None = None
    limits: LimitValues | None = None
    created_by: str | None = None
    permissions: frozenset[Permission] = frozenset()

    def is_active(self, now: datetime) -> bool:
        """Not revoked and not expired at ``now``."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the result of authentication, passed down the request path."""

    tenant_id: str
    key_id: str
    role: Role
    allowed_models: tuple[str, ...] | None = None
    expires_at: datetime | None = None
    allowed_regions: tuple[str, ...] | None = None
    key_prefix: str = ""
    key_limits: LimitValues | None = None
    tenant_limits: LimitValues | None = None
    permissions: frozenset[Permission] = frozenset()

    def holds(self, permission: Permission) -> bool:
        """Whether this key was granted ``permission`` (platform admins hold every one)."""
        return self.role is Role.PLATFORM_ADMIN or permission in self.permissions

    def may_use_model(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def may_use_region(self, region: str | None) -> bool:
        """Instances without a region are open to every key; others need the region allowed."""
        return self.allowed_regions is None or region is None or region in self.allowed_regions

    def acts_in(self, tenant_id: str) -> bool:
        """Whether this principal may act on objects of ``tenant_id``."""
        return self.role is Role.PLATFORM_ADMIN or self.tenant_id == tenant_id


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly created key: the secret is here once and never again."""

    secret: str
    key: ApiKey
