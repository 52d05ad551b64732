"""Streamed answers as iterators of text deltas: :class:`GenerationStream` and its async twin.

A stream owns one open HTTP response and closes it when iteration ends, fails, or the caller
closes the stream (directly or by leaving its ``with`` block). After iteration ``text``,
``usage``, ``finish_reason``, ``id`` and ``model`` describe the whole answer; during iteration they
describe what has arrived so far. An error event in the stream is raised as the matching
:class:`GLMError` after the deltas that preceded it; a stream is never retried.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterator
from contextlib import contextmanager
from types import TracebackType

import httpx

from openautoglm.sdk._protocol import StreamKind, request_id_of
from openautoglm.sdk._sse import SSEDecoder, StreamState
from openautoglm.sdk.errors import error_from_transport
from openautoglm.sdk.types import Usage


@contextmanager
def _transport_errors_as_sdk_errors(request_id: str | None) -> Iterator[None]:
    try:
        yield
    except httpx.TransportError as exc:
        raise error_from_transport(exc, request_id) from exc


class _StreamView:
    """The read-only view of a stream's state shared by both stream classes."""

    def __init__(self, response: httpx.Response, kind: StreamKind) -> None:
        self._response = response
        self._state = StreamState(kind, request_id_of(response))
        self._decoder = SSEDecoder()

    @property
    def text(self) -> str:
        """The text received so far; the whole answer once iteration has finished."""
        return self._state.text

    @property
    def usage(self) -> Usage | None:
        """Token usage, known once the final chunk arrived."""
        return self._state.usage

    @property
    def finish_reason(self) -> str | None:
        """Why generation stopped (``stop``, ``length``, ...), known at the end."""
        return self._state.finish_reason

    @property
    def id(self) -> str | None:
        """The generation or completion id."""
        return self._state.id

    @property
    def model(self) -> str | None:
        """The model that answered."""
        return self._state.model

    @property
    def request_id(self) -> str | None:
        """The server's ``X-Request-Id``."""
        return self._state.request_id

    def _deltas_of(self, chunk: str) -> Iterator[str]:
        for payload in self._decoder.feed(chunk):
            delta = self._state.apply(payload)
            if self._state.is_done:
                return
            if delta:
                yield delta

    def _final_deltas(self) -> Iterator[str]:
        for payload in self._decoder.finish():
            delta = self._state.apply(payload)
            if self._state.is_done:
                break
            if delta:
                yield delta
        self._state.check_complete()


class GenerationStream(_StreamView):
    """Iterator of a streamed answer's text deltas; use it in a ``with`` block or ``close()`` it."""

    def __init__(self, response: httpx.Response, kind: StreamKind) -> None:
        super().__init__(response, kind)
        self._deltas = self._iterate()

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        return next(self._deltas)

    def _iterate(self) -> Generator[str, None, None]:
        try:
            with _transport_errors_as_sdk_errors(self.request_id):
                for chunk in self._response.iter_text():
                    yield from self._deltas_of(chunk)
                    if self._state.is_done:
                        return
                yield from self._final_deltas()
        finally:
            self._response.close()

    def close(self) -> None:
        """Stop reading and release the connection; safe to call more than once."""
        self._deltas.close()
        self._response.close()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncGenerationStream(_StreamView):
    """Async iterator of text deltas; use it in an ``async with`` block or ``await aclose()``."""

    def __init__(self, response: httpx.Response, kind: StreamKind) -> None:
        super().__init__(response, kind)
        self._deltas = self._iterate()

    def __aiter__(self) -> AsyncGenerationStream:
        return self

    async def __anext__(self) -> str:
        return await self._deltas.__anext__()

    async def _iterate(self) -> AsyncGenerator[str, None]:
        try:
            with _transport_errors_as_sdk_errors(self.request_id):
                async for chunk in self._response.aiter_text():
                    for delta in self._deltas_of(chunk):
                        yield delta
                    if self._state.is_done:
                        return
                for delta in self._final_deltas():
                    yield delta
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        """Stop reading and release the connection; safe to call more than once."""
        await self._deltas.aclose()
        await self._response.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
