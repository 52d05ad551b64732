"""Audit API: list, export and verify the audit log.

Who sees what: auditors and admins see their own tenant's events only (naming another tenant
is answered 404, as everywhere in the admin API); platform admins see every tenant's.
Developers and operators are refused (403). ``verify`` checks the whole chain for any of the
three roles but reports seq numbers and check names only, never another tenant's content.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import StreamingResponse

from openautoglm.api.context import services_of
from openautoglm.api.routes.admin import caller
from openautoglm.api.routes.inference import ERRORS
from openautoglm.audit.export import MEDIA_TYPES, ExportFormat, encode_pages, event_dict
from openautoglm.audit.log import AuditLog
from openautoglm.audit.model import Kind
from openautoglm.audit.ports import MAX_PAGE, AuditQuery, Order
from openautoglm.core.errors import NotFoundError, PermissionDeniedError
from openautoglm.tenancy.model import Principal, Role

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERRORS)
_READERS = frozenset({Role.AUDITOR, Role.ADMIN, Role.PLATFORM_ADMIN})


async def audit_reader(request: Request) -> Principal:
    principal = await caller(request)
    if principal.role not in _READERS:
        raise PermissionDeniedError(
            f"role '{principal.role.value}' may not read the audit log", code="role_forbidden"
        )
    return principal


def audit_log_of(request: Request) -> AuditLog:
    audit = services_of(request).audit
    if audit is None:
        raise NotFoundError("the audit log is disabled on this server", code="audit_disabled")
    return audit


Reader = Annotated[Principal, Depends(audit_reader)]
Log = Annotated[AuditLog, Depends(audit_log_of)]


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def filters(
    reader: Reader,
    since: Annotated[datetime | None, Query(description="occurred at or after (ISO-8601)")] = None,
    until: Annotated[datetime | None, Query(description="occurred before (ISO-8601)")] = None,
    tenant_id: Annotated[str | None, Query(description="platform admins only: any")] = None,
    key_id: str | None = None,
    model: str | None = None,
    status: Annotated[int | None, Query(ge=100, le=599, description="HTTP status")] = None,
    rule: Annotated[str | None, Query(description="a policy rule id that decided")] = None,
    kind: Kind | None = None,
) -> AuditQuery:
    """The query parameters as an ``AuditQuery``, scoped to what ``reader`` may see: auditors
    and admins their own tenant (another tenant is 404, as in the admin API)."""
    if reader.role is not Role.PLATFORM_ADMIN:
        if tenant_id is not None and tenant_id != reader.tenant_id:
            raise NotFoundError(f"tenant '{tenant_id}' not found", code="tenant_not_found")
        tenant_id = reader.tenant_id
    return AuditQuery(
        since=_utc(since),
        until=_utc(until),
        tenant_id=tenant_id,
        key_id=key_id,
        model=model,
        status=status,
        rule=rule,
        kind=kind,
    )


Filters = Annotated[AuditQuery, Depends(filters)]


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    next_cursor: str | None
    has_more: bool


class VerifyOut(BaseModel):
    object: Literal["audit.verification"] = "audit.verification"
    ok: bool
    checked: int
    first_broken_seq: int | None
    reason: str | None
    checkpoints: int
    first_seq: int | None
    last_seq: int | None


@router.get("/events", response_model=EventList)
async def list_events(
    log: Log,
    query: Filters,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    order: Annotated[Order, Query(description="by seq; newest first by default")] = "desc",
) -> EventList:
    page = await log.page(query, limit=limit, cursor=cursor, order=order)
    return EventList(
        data=[event_dict(event) for event in page.events],
        next_cursor=page.next_cursor,
        has_more=page.next_cursor is not None,
    )


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
async def export_events(
    log: Log,
    query: Filters,
    format: Annotated[ExportFormat, Query(description="jsonl or csv")] = "jsonl",
    order: Annotated[Order, Query(description="by seq; oldest first by default")] = "asc",
) -> StreamingResponse:
    return StreamingResponse(
        encode_pages(log.pages(query, order=order), format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="audit.{format}"'},
    )


@router.get("/verify", response_model=VerifyOut)
async def verify_chain(reader: Reader, log: Log) -> VerifyOut:
    report = await log.verify()
    return VerifyOut(
        ok=report.ok,
        checked=report.checked,
        first_broken_seq=report.first_broken_seq,
        reason=report.reason,
        checkpoints=report.checkpoints,
        first_seq=report.first_seq,
        last_seq=report.last_seq,
    )
