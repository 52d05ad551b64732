"""Server-Sent Events for streamed answers.

Invariant: the backend stream is closed however the response ends — finished, failed mid-way
(the client gets an ``error`` event), or abandoned by a disconnected client (Starlette cancels
the response task; the ``finally`` closes the generation, shielded so the close itself runs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from starlette.responses import StreamingResponse

from openautoglm.api.errors import error_payload
from openautoglm.api.responses import ChunkEncoder
from openautoglm.core.errors import OpenAutoGLMError
from openautoglm.gateway.pipeline import OpenStream
from openautoglm.gateway.trace import CallTrace

_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _events(
    opened: OpenStream,
    preamble: list[dict[str, Any]],
    encode: ChunkEncoder,
    trace: CallTrace | None,
) -> AsyncIterator[bytes]:
    try:
        for payload in preamble:
            yield _event(payload)
        for payload in encode(opened.first):
            yield _event(payload)
        async for chunk in opened.rest:
            for payload in encode(chunk):
                yield _event(payload)
    except OpenAutoGLMError as exc:
        if trace is not None:
            trace.error_code = exc.code
        yield _event(error_payload(exc))
    finally:
        with anyio.CancelScope(shield=True):
            await opened.rest.aclose()
    yield _DONE


def sse_response(
    opened: OpenStream,
    preamble: list[dict[str, Any]],
    encode: ChunkEncoder,
    headers: dict[str, str],
    trace: CallTrace | None = None,
) -> StreamingResponse:
    """A ``text/event-stream`` response that ends with ``data: [DONE]``."""
    return StreamingResponse(
        _events(opened, preamble, encode, trace),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **headers},
    )
