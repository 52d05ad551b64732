"""Tenancy value types: tenants, API keys, roles and the authenticated principal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


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


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: datetime


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

    def may_use_model(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly created key: the secret is here once and never again."""

    secret: str
    key: ApiKey
