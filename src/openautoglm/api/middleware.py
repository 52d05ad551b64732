"""Pure-ASGI middleware on every request: request id, body-size limit, and the audit trace.

Plain ASGI (not ``BaseHTTPMiddleware``) because it runs on the hot path of every call.
Invariant: every response, errors included, carries ``X-Request-Id``; a body over the limit is
refused with 413 before the handler sees it (by ``Content-Length``) or as soon as the received
bytes pass the limit (chunked bodies). Each request gets a :class:`CallTrace`; when the response
has been sent (a stream: to its end), ``on_finish`` receives it with the status.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openautoglm.api.errors import error_payload
from openautoglm.core.errors import PayloadTooLargeError
from openautoglm.core.ids import RequestIds
from openautoglm.gateway.trace import CallTrace

OnFinish = Callable[[Scope, CallTrace, int, str], None]

_CLIENT_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Assigns ``scope["state"]["request_id"]`` and enforces ``max_body_bytes``."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, on_finish: OnFinish | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_finish = on_finish
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, content_length = self._read_headers(scope["headers"])
        client = scope.get("client")
        trace = CallTrace(f"{scope['method']} {scope['path']}", client[0] if client else None)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["trace"] = trace
        id_header = (b"x-request-id", request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        if content_length is not None and content_length > self.max_body_bytes:
            await self._refuse(send_with_id)
            return
        try:
            await self.app(scope, self._limited(receive), send_with_id)
        finally:
            if self.on_finish is not None and trace.authenticated:
                self.on_finish(scope, trace, status, request_id)

    def _read_headers(self, headers: Any) -> tuple[str, int | None]:
        request_id = None
        content_length = None
        for name, value in headers:
            if name == b"x-request-id" and _CLIENT_ID.match(value):
                request_id = value.decode()
            elif name == b"content-length" and value.isdigit():
                content_length = int(value)
        return request_id or self._ids.next(), content_length

    def _limited(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        return receive_limited

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(error_payload(_too_large(self.max_body_bytes)))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"Request body is larger than the limit of {limit} bytes.")
