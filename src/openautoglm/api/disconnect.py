"""Cancelling the work of a non-streamed request whose client has gone away.

Streams are cancelled by Starlette when their client disconnects; a plain request would
otherwise run to the end (a local model decoding hundreds of tokens nobody will read). While
the work runs, a watcher waits for ``http.disconnect`` and cancels it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from openautoglm.core.errors import OpenAutoGLMError

T = TypeVar("T")


class ClientDisconnected(OpenAutoGLMError):
    """The client closed the connection before the answer was ready (nginx's 499)."""

    status = 499
    type = "client_error"
    code = "client_disconnected"


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it and raise ``ClientDisconnected``."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            continue
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnected("client disconnected before the answer was ready") from None
        raise
    finally:
        watcher.cancel()
