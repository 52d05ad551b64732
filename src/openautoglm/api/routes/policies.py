"""Policy API: versioned policy documents, a dry-run tester, and key suspensions.

Scopes are ``global`` (platform admins only: its word lists are not shown to tenants) and
tenant ids (that tenant's admins write; its admins and auditors read). Another tenant's scope
is answered 404, as elsewhere in the admin API.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from openautoglm.api.context import services_of, trace_of
from openautoglm.api.routes.admin import Admin, Caller, ListOf
from openautoglm.api.routes.inference import ERRORS
from openautoglm.core.errors import NotFoundError, PermissionDeniedError
from openautoglm.policy.engine import EffectivePolicy, decisions_of
from openautoglm.policy.ports import GLOBAL_SCOPE, PolicyVersion, Suspension
from openautoglm.policy.service import PolicyService, validate
from openautoglm.tenancy.model import Principal, Role

router = APIRouter(prefix="/v1/admin", tags=["policies"], responses=ERRORS)


def policies_of(request: Request) -> PolicyService:
    return services_of(request).policies


Policies = Annotated[PolicyService, Depends(policies_of)]


class PolicyApply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document: str = Field(min_length=1, description="the policy as YAML text")
    comment: str | None = Field(default=None, max_length=2000)


class PolicyOut(BaseModel):
    object: Literal["policy"] = "policy"
    scope: str
    version: int
    digest: str | None
    created_at: int
    created_by: str | None
    comment: str | None
    active: bool
    document: str | None = None


class PolicyTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=1_000_000)
    stage: Literal["input", "output"] = "input"
    model: str = Field(default="*", max_length=200, description="the model the text is sent to")
    document: str | None = Field(
        default=None, description="a draft policy to test (default: the rules in force)"
    )
    tenant_id: str | None = Field(default=None, description="default: the caller's tenant")


class PolicyTestResult(BaseModel):
    object: Literal["policy_test"] = "policy_test"
    text: str = Field(description="the text as it would be passed on (masked, cut at a block)")
    blocked_by: str | None
    decisions: list[dict[str, str]]


class SuspensionOut(BaseModel):
    object: Literal["key_suspension"] = "key_suspension"
    key_id: str
    tenant_id: str
    until: int
    reason: str
    created_at: int


_WRITERS = (Role.PLATFORM_ADMIN, Role.ADMIN)
_READERS = (Role.PLATFORM_ADMIN, Role.ADMIN, Role.AUDITOR)


def _out(version: PolicyVersion, with_document: bool = False) -> PolicyOut:
    return PolicyOut(
        scope=version.scope,
        version=version.version,
        digest=version.digest,
        created_at=int(version.created_at.timestamp()),
        created_by=version.created_by,
        comment=version.comment,
        active=version.document is not None,
        document=version.document if with_document else None,
    )


async def _check_scope(actor: Principal, scope: str, admin: Admin, write: bool) -> None:
    if scope == GLOBAL_SCOPE:
        if actor.role is not Role.PLATFORM_ADMIN:
            raise PermissionDeniedError("only platform admins manage the global policy")
        return
    await admin.get_tenant(actor, scope)  # 404 for an unknown or another tenant
    if actor.role not in (_WRITERS if write else _READERS):
        raise PermissionDeniedError(
            f"role '{actor.role.value}' may not {'change' if write else 'read'} policies"
        )


@router.get("/policies", response_model=ListOf, summary="Policies in force that you may see")
async def list_policies(actor: Caller, policies: Policies, admin: Admin) -> ListOf:
    heads = await policies.heads()
    if actor.role is Role.PLATFORM_ADMIN:
        scopes = sorted(heads)
    else:
        await _check_scope(actor, actor.tenant_id, admin, write=False)
        scopes = [actor.tenant_id]
    current = [await policies.current(scope) for scope in scopes if scope in heads]
    return ListOf(data=[_out(version) for version in current if version is not None])


@router.put(
    "/policies/{scope}",
    status_code=status.HTTP_201_CREATED,
    response_model=PolicyOut,
    summary="Apply a new version of a scope's policy (refused whole if invalid)",
)
async def apply_policy(
    scope: str, body: PolicyApply, actor: Caller, policies: Policies, admin: Admin, request: Request
) -> PolicyOut:
    await _check_scope(actor, scope, admin, write=True)
    version = await policies.apply(scope, body.document, actor.key_id, body.comment)
    trace_of(request).admin_action(
        "policy.applied", scope=scope, version=version.version, digest=version.digest
    )
    return _out(version)


@router.get("/policies/{scope}", response_model=PolicyOut, summary="The policy in force")
async def get_policy(scope: str, actor: Caller, policies: Policies, admin: Admin) -> PolicyOut:
    await _check_scope(actor, scope, admin, write=False)
    version = await policies.current(scope)
    if version is None:
        raise NotFoundError(f"no policy in force for '{scope}'", code="policy_not_found")
    return _out(version, with_document=True)


@router.delete("/policies/{scope}", response_model=PolicyOut, summary="Withdraw a policy")
async def withdraw_policy(
    scope: str, actor: Caller, policies: Policies, admin: Admin, request: Request
) -> PolicyOut:
    await _check_scope(actor, scope, admin, write=True)
    version = await policies.withdraw(scope, actor.key_id)
    trace_of(request).admin_action("policy.withdrawn", scope=scope, version=version.version)
    return _out(version)


@router.get("/policies/{scope}/versions", response_model=ListOf, summary="Version history")
async def list_versions(scope: str, actor: Caller, policies: Policies, admin: Admin) -> ListOf:
    await _check_scope(actor, scope, admin, write=False)
    return ListOf(data=[_out(version) for version in await policies.versions(scope)])


@router.get("/policies/{scope}/versions/{number}", response_model=PolicyOut)
async def get_version(
    scope: str, number: int, actor: Caller, policies: Policies, admin: Admin
) -> PolicyOut:
    await _check_scope(actor, scope, admin, write=False)
    version = await policies.version(scope, number)
    if version is None:
        raise NotFoundError(f"'{scope}' has no version {number}", code="policy_not_found")
    return _out(version, with_document=True)


@router.post(
    "/policies/test",
    response_model=PolicyTestResult,
    summary="Dry-run text through a draft policy or the rules in force",
)
async def test_policy(
    body: PolicyTest, actor: Caller, policies: Policies, admin: Admin
) -> PolicyTestResult:
    tenant_id = body.tenant_id or actor.tenant_id
    await _check_scope(actor, tenant_id, admin, write=False)
    if body.document is not None:
        policy = EffectivePolicy([validate(body.document, policies.libraries_dir)], {"draft": 0})
    else:
        policy = policies.for_tenant(tenant_id)
    guard = policy.guard(body.stage, body.model)
    if guard is None:
        return PolicyTestResult(text=body.text, blocked_by=None, decisions=[])
    result = guard.apply(body.text)
    return PolicyTestResult(
        text=result.text,
        blocked_by=result.blocked.rule_id if result.blocked is not None else None,
        decisions=[d.as_dict() for d in decisions_of(result.spans, body.stage)],
    )


def _suspension_out(suspension: Suspension) -> SuspensionOut:
    return SuspensionOut(
        key_id=suspension.key_id,
        tenant_id=suspension.tenant_id,
        until=int(suspension.until.timestamp()),
        reason=suspension.reason,
        created_at=int(suspension.created_at.timestamp()),
    )


@router.get("/suspensions", response_model=ListOf, summary="Keys suspended for violations")
async def list_suspensions(actor: Caller, policies: Policies, admin: Admin) -> ListOf:
    if actor.role is not Role.PLATFORM_ADMIN:
        await _check_scope(actor, actor.tenant_id, admin, write=False)
    found = [s for s in await policies.suspensions() if actor.acts_in(s.tenant_id)]
    return ListOf(data=[_suspension_out(s) for s in found])


@router.delete("/suspensions/{key_id}", response_model=SuspensionOut, summary="Lift a suspension")
async def lift_suspension(
    key_id: str, actor: Caller, policies: Policies, admin: Admin, request: Request
) -> SuspensionOut:
    found = {s.key_id: s for s in await policies.suspensions()}.get(key_id)
    if found is None or not actor.acts_in(found.tenant_id):
        raise NotFoundError(f"key '{key_id}' is not suspended", code="suspension_not_found")
    await _check_scope(actor, found.tenant_id, admin, write=True)
    await policies.lift(key_id)
    trace_of(request).admin_action("key.unsuspended", key_id=key_id, tenant_id=found.tenant_id)
    return _suspension_out(found)
