"""Admin API: tenants (platform admins) and API keys (tenant admins and platform admins).

Role checks live in ``tenancy.admin``; these routes only translate HTTP to those calls.
Another tenant's objects are answered 404.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request

from openautoglm.api.context import authenticate, services_of, trace_of
from openautoglm.api.routes.inference import ERRORS
from openautoglm.tenancy.admin import TenancyAdmin
from openautoglm.tenancy.model import ApiKey, Permission, Principal, Role, Tenant

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=ERRORS)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
Limits = dict[str, int]


async def caller(request: Request) -> Principal:
    """The authenticated principal of an admin request."""
    return await authenticate(request)


def admin_of(request: Request) -> TenancyAdmin:
    return services_of(request).admin


Caller = Annotated[Principal, Depends(caller)]
Admin = Annotated[TenancyAdmin, Depends(admin_of)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(_Body):
    name: str = Field(description="unique; letters, digits, '.', '_', '-'")
    limits: Limits | None = Field(default=None, description="requests_per_minute, ... (see docs)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                "1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return name


class TenantUpdate(_Body):
    limits: Limits | None = Field(default=None, description="null clears the tenant's limits")
    disabled: bool | None = None


class TenantOut(BaseModel):
    id: str
    object: Literal["tenant"] = "tenant"
    name: str
    created_at: int
    limits: Limits | None
    disabled: bool


class KeyCreate(_Body):
    tenant_id: str | None = Field(default=None, description="default: the caller's tenant")
    role: Role = Role.DEVELOPER
    name: str = Field(default="", max_length=200)
    allowed_models: list[str] | None = None
    allowed_regions: list[str] | None = None
    limits: Limits | None = None
    expires_at: datetime | None = None
    expires_in_s: int | None = Field(default=None, ge=1)
    permissions: list[Permission] = Field(
        default_factory=list, description="rights beyond the role, e.g. approve_models"
    )


class KeyRotate(_Body):
    grace_s: float = Field(
        default=0, ge=0, le=30 * 86400, description="old key keeps working this long"
    )


class KeyOut(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    tenant_id: str
    name: str
    role: Role
    prefix: str
    allowed_models: list[str] | None
    allowed_regions: list[str] | None
    limits: Limits | None
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    created_by: str | None
    permissions: list[Permission]
    active: bool


class KeyCreated(KeyOut):
    secret: str = Field(description="shown once; only its hash is stored")


class ListOf(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]


def _unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        created_at=int(tenant.created_at.timestamp()),
        limits=dict(tenant.limits) if tenant.limits is not None else None,
        disabled=tenant.is_disabled,
    )


def key_out(key: ApiKey, request: Request) -> dict[str, Any]:
    now = services_of(request).clock.now()
    return KeyOut(
        id=key.id,
        tenant_id=key.tenant_id,
        name=key.name,
        role=key.role,
        prefix=key.prefix,
        allowed_models=list(key.allowed_models) if key.allowed_models is not None else None,
        allowed_regions=list(key.allowed_regions) if key.allowed_regions is not None else None,
        limits=dict(key.limits) if key.limits is not None else None,
        created_at=int(key.created_at.timestamp()),
        expires_at=_unix(key.expires_at),
        revoked_at=_unix(key.revoked_at),
        created_by=key.created_by,
        permissions=sorted(key.permissions),
        active=key.is_active(now),
    ).model_dump()


@router.post("/tenants", status_code=status.HTTP_201_CREATED, response_model=TenantOut)
async def create_tenant(
    body: TenantCreate, actor: Caller, admin: Admin, request: Request
) -> TenantOut:
    tenant = await admin.create_tenant(actor, body.name, body.limits)
    trace_of(request).admin_action("tenant.created", tenant_id=tenant.id, name=tenant.name)
    return tenant_out(tenant)


@router.get("/tenants", response_model=ListOf)
async def list_tenants(actor: Caller, admin: Admin) -> ListOf:
    return ListOf(data=[tenant_out(t) for t in await admin.list_tenants(actor)])


@router.get("/tenants/{tenant_id}", response_model=TenantOut)
async def get_tenant(tenant_id: str, actor: Caller, admin: Admin) -> TenantOut:
    return tenant_out(await admin.get_tenant(actor, tenant_id))


@router.patch("/tenants/{tenant_id}", response_model=TenantOut)
async def update_tenant(
    tenant_id: str, body: TenantUpdate, actor: Caller, admin: Admin, request: Request
) -> TenantOut:
    clear = "limits" in body.model_fields_set and body.limits is None
    tenant = await admin.update_tenant(
        actor, tenant_id, limits=body.limits, clear_limits=clear, disabled=body.disabled
    )
    trace_of(request).admin_action(
        "tenant.updated", tenant_id=tenant_id, fields=sorted(body.model_fields_set)
    )
    return tenant_out(tenant)


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
async def create_key(
    body: KeyCreate, actor: Caller, admin: Admin, request: Request
) -> dict[str, Any]:
    expires_at = body.expires_at
    if body.expires_in_s is not None:
        expires_at = services_of(request).clock.now() + timedelta(seconds=body.expires_in_s)
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    issued = await admin.issue_key(
        actor,
        body.tenant_id or actor.tenant_id,
        body.role,
        name=body.name,
        allowed_models=tuple(body.allowed_models) if body.allowed_models is not None else None,
        allowed_regions=tuple(body.allowed_regions) if body.allowed_regions is not None else None,
        limits=body.limits,
        expires_at=expires_at,
        permissions=frozenset(body.permissions),
    )
    key = issued.key
    trace_of(request).admin_action(
        "key.created", key_id=key.id, tenant_id=key.tenant_id, role=key.role.value
    )
    return {**key_out(key, request), "secret": issued.secret}


TenantQuery = Annotated[str | None, Query(description="default: the caller's tenant")]


@router.get("/keys", response_model=ListOf)
async def list_keys(
    actor: Caller, admin: Admin, request: Request, tenant_id: TenantQuery = None
) -> ListOf:
    keys = await admin.list_keys(actor, tenant_id or actor.tenant_id)
    return ListOf(data=[key_out(key, request) for key in keys])


@router.get("/keys/{key_id}", response_model=KeyOut)
async def get_key(
    key_id: str, actor: Caller, admin: Admin, request: Request, tenant_id: TenantQuery = None
) -> dict[str, Any]:
    return key_out(await admin.get_key(actor, tenant_id or actor.tenant_id, key_id), request)


@router.post("/keys/{key_id}/revoke", response_model=KeyOut)
async def revoke_key(
    key_id: str, actor: Caller, admin: Admin, request: Request, tenant_id: TenantQuery = None
) -> dict[str, Any]:
    key = await admin.revoke_key(actor, tenant_id or actor.tenant_id, key_id)
    trace_of(request).admin_action("key.revoked", key_id=key.id, tenant_id=key.tenant_id)
    return key_out(key, request)


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke a key (same as /revoke)")
async def delete_key(
    key_id: str, actor: Caller, admin: Admin, request: Request, tenant_id: TenantQuery = None
) -> dict[str, Any]:
    return await revoke_key(key_id, actor, admin, request, tenant_id)


@router.post(
    "/keys/{key_id}/rotate", status_code=status.HTTP_201_CREATED, response_model=KeyCreated
)
async def rotate_key(
    key_id: str,
    actor: Caller,
    admin: Admin,
    request: Request,
    body: KeyRotate | None = None,
    tenant_id: TenantQuery = None,
) -> dict[str, Any]:
    grace_s = body.grace_s if body is not None else 0
    issued = await admin.rotate_key(actor, tenant_id or actor.tenant_id, key_id, grace_s)
    trace_of(request).admin_action(
        "key.rotated", key_id=key_id, new_key_id=issued.key.id, tenant_id=issued.key.tenant_id
    )
    return {**key_out(issued.key, request), "secret": issued.secret}
