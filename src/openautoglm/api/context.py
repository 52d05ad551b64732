"""Per-request helpers shared by routes: services, request id, the caller's key."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request

from openautoglm.gateway.trace import CallTrace, untraced
from openautoglm.tenancy.model import Principal

if TYPE_CHECKING:
    from openautoglm.services import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def request_id_of(request: Request) -> str:
    request_id: str = request.scope["state"]["request_id"]
    return request_id


def trace_of(request: Request) -> CallTrace:
    """The request's call chain (the audit record in the making)."""
    trace: CallTrace | None = request.scope["state"].get("trace")
    return trace if trace is not None else untraced()


async def authenticate(request: Request) -> Principal:
    """The caller, authenticated; the attempt goes on the request's trace (and so is audited)."""
    return await services_of(request).gateway.authenticate(api_key_of(request), trace_of(request))


def api_key_of(request: Request) -> str | None:
    """The key from ``Authorization: Bearer …`` or an ``api-key`` header (Azure-style)."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip() or None
        return None
    return request.headers.get("api-key")


def unix_time() -> int:
    return int(time.time())
