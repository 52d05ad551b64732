"""Contexts API: conversation sessions of the caller's tenant (``context_id``).

Every route is scoped to the caller's tenant; another tenant's context is 404, even when its id
is guessed. Keys that may not call models (auditors) may not touch contexts either.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from openautoglm.api.context import services_of
from openautoglm.api.routes.admin import caller
from openautoglm.api.routes.inference import ERRORS
from openautoglm.contexts.model import Context, Turn
from openautoglm.contexts.service import DEFAULT, ContextService
from openautoglm.core.errors import InvalidRequestError, PermissionDeniedError
from openautoglm.tenancy.model import Principal

router = APIRouter(prefix="/v1/contexts", tags=["contexts"], responses=ERRORS)


async def context_user(request: Request) -> Principal:
    principal = await caller(request)
    if not principal.role.may_infer:
        raise PermissionDeniedError(
            f"role '{principal.role.value}' may not use contexts", code="role_forbidden"
        )
    return principal


User = Annotated[Principal, Depends(context_user)]


def contexts_of(request: Request) -> ContextService:
    return services_of(request).contexts


Contexts = Annotated[ContextService, Depends(contexts_of)]


class ContextCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="your id; default: a random ctx_… id")
    title: str | None = None
    labels: dict[str, str] | None = None
    system_prompt: str | None = None
    ttl_s: int | None = Field(default=None, ge=1, description="idle lifetime; default: server's")
    max_turns: int | None = Field(default=None, ge=2, description="default: server's")


class TurnOut(BaseModel):
    seq: int
    role: str
    content: str
    num_tokens: int | None
    created_at: int
    request_id: str | None


class ContextOut(BaseModel):
    id: str
    object: Literal["context"] = "context"
    title: str | None
    labels: dict[str, str]
    system_prompt: str | None
    max_turns: int | None
    ttl_s: int | None
    created_at: int
    updated_at: int
    expires_at: int | None
    num_turns: int
    turns: list[TurnOut] | None = None


class ContextList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ContextOut]
    next_cursor: str | None
    has_more: bool


class ContextDeleted(BaseModel):
    id: str
    object: Literal["context.deleted"] = "context.deleted"
    deleted: bool = True


def context_out(context: Context, turns: list[Turn] | None = None) -> ContextOut:
    return ContextOut(
        id=context.id,
        title=context.title,
        labels=dict(context.labels),
        system_prompt=context.system_prompt,
        max_turns=context.max_turns,
        ttl_s=context.ttl_s,
        created_at=int(context.created_at.timestamp()),
        updated_at=int(context.updated_at.timestamp()),
        expires_at=int(context.expires_at.timestamp()) if context.expires_at else None,
        num_turns=len(turns) if turns is not None else context.num_turns,
        turns=None
        if turns is None
        else [
            TurnOut(
                seq=t.seq,
                role=t.role,
                content=t.content,
                num_tokens=t.num_tokens,
                created_at=int(t.created_at.timestamp()),
                request_id=t.request_id,
            )
            for t in turns
        ],
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ContextOut)
async def create_context(body: ContextCreate, user: User, contexts: Contexts) -> ContextOut:
    options: dict[str, Any] = {}
    if body.ttl_s is not None:
        options["ttl_s"] = body.ttl_s
    if body.max_turns is not None:
        options["max_turns"] = body.max_turns
    context = await contexts.create(
        user.tenant_id,
        body.id,
        title=body.title,
        labels=body.labels,
        system_prompt=body.system_prompt,
        ttl_s=options.get("ttl_s", DEFAULT),
        max_turns=options.get("max_turns", DEFAULT),
    )
    return context_out(context)


@router.get("", response_model=ContextList)
async def list_contexts(
    user: User,
    contexts: Contexts,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    label: Annotated[list[str] | None, Query(description="key:value, repeatable")] = None,
) -> ContextList:
    labels = {}
    for item in label or []:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise InvalidRequestError("label filters look like key:value", param="label")
        labels[key] = value
    page = await contexts.list(user.tenant_id, limit=limit, cursor=after, labels=labels or None)
    return ContextList(
        data=[context_out(c) for c in page.items],
        next_cursor=page.next_cursor,
        has_more=page.next_cursor is not None,
    )


@router.get("/{context_id}", response_model=ContextOut)
async def get_context(
    context_id: str,
    user: User,
    contexts: Contexts,
    include_turns: Annotated[bool, Query(description="include the stored turns")] = True,
) -> ContextOut:
    context = await contexts.get(user.tenant_id, context_id)
    turns = await contexts.turns(user.tenant_id, context_id) if include_turns else None
    return context_out(context, turns)


@router.delete("/{context_id}", response_model=ContextDeleted)
async def delete_context(context_id: str, user: User, contexts: Contexts) -> ContextDeleted:
    await contexts.delete(user.tenant_id, context_id)
    return ContextDeleted(id=context_id)
