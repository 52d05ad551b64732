"""A fake OpenAI-compatible upstream that speaks the real protocol over a real socket.

An ``aiohttp.web`` server on a free 127.0.0.1 port, run inside the test's event loop. Each test
scripts what a path answers with :meth:`FakeUpstream.on` — a whole answer or an SSE stream
(:class:`Answer`), an OpenAI error body (:class:`ErrorReply`), a body that is not JSON
(:class:`Garbage`), an error event in the middle of a stream (:class:`StreamError`), a connection
dropped mid-body (:class:`Drop`) or no answer at all (:class:`Hang`) — and then reads what it
received (:attr:`FakeUpstream.requests`) and what happened to its streams (:attr:`streams_opened`,
:attr:`streams_finished`, :attr:`streams_aborted`, :attr:`streams_open`).

Invariant: every stream the fake opens ends as exactly one of *finished* (it sent ``[DONE]``) or
*aborted* (the client went away, or the fake dropped the connection), so a test sees a consumer's
disconnect as ``streams_aborted`` growing; any request whose client hung up before the answer was
complete also counts in ``requests_abandoned``. Handlers are cancelled when their client
disconnects, so a stream that waits (on a delay or a test's ``release`` event) notices at once.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any  # the parsed JSON body, or None when there was none


@dataclass
class Answer:
    """A successful answer. Streamed when the request asks for ``stream: true``: a role event
    (chat), one event per item of ``chunks``, a finish event, a usage event when the request set
    ``stream_options.include_usage``, then ``[DONE]``.

    ``delay_s`` waits before each chunk; with ``release`` set, the fake sends the first
    ``hold_after`` chunks and then waits for the test to set the event before sending the rest.
    """

    chunks: Sequence[str] = ("Hello", ", ", "world")
    finish_reason: str | None = "stop"
    prompt_tokens: int = 5
    completion_tokens: int = 3
    delay_s: float = 0.0
    release: asyncio.Event | None = None
    hold_after: int = 1
    send_usage: bool = True

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass
class ErrorReply:
    """An HTTP error with OpenAI's error body (or ``raw_body`` verbatim)."""

    status: int
    message: str = "upstream says no"
    type: str = "invalid_request_error"
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None


@dataclass
class Garbage:
    """A body that is not JSON, with the given status (200: a "successful" garbage answer)."""

    body: bytes = b"<html><body>502 Bad Gateway (nginx)</body></html>"
    status: int = 200
    content_type: str = "text/html"


@dataclass
class StreamError:
    """A stream that sends ``chunks_before`` content events, then ``{"error": ...}``."""

    message: str = "model crashed while generating"
    chunks_before: int = 1


@dataclass
class Drop:
    """An answer (streamed or not) cut off after ``chunks_before`` content events: the fake
    aborts the connection mid-body."""

    chunks_before: int = 1


@dataclass
class Hang:
    """Accept the request and never answer (until the client gives up or the fake stops)."""


@dataclass
class Embeddings:
    """Embedding vectors, sent in *reverse* index order to prove the client orders them."""

    vectors: Sequence[Sequence[float]] = ((0.1, 0.2), (0.3, 0.4), (0.5, 0.6))
    prompt_tokens: int = 6


Reply = Answer | ErrorReply | Garbage | StreamError | Drop | Hang | Embeddings


class FakeUpstream:
    """A scriptable OpenAI-compatible server; use as ``async with FakeUpstream() as fake``."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.streams_opened = 0
        self.streams_finished = 0
        self.streams_aborted = 0
        self.events_sent = 0  # SSE events handed to the socket, over all streams
        self.requests_abandoned = 0  # clients that hung up before the fake answered in full
        self._replies: dict[str, Reply] = {
            CHAT_PATH: Answer(),
            COMPLETIONS_PATH: Answer(),
            EMBEDDINGS_PATH: Embeddings(),
        }
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancel a handler when its client disconnects: that is how the fake sees a disconnect.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = _bound_port(site)
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """What an ``openai`` instance's ``base_url`` is set to."""
        return f"http://127.0.0.1:{self.port}/v1"

    # --- scripting and inspection ------------------------------------------------------------

    def on(self, path: str, reply: Reply) -> None:
        """Answer every later request to ``path`` (e.g. :data:`CHAT_PATH`) with ``reply``."""
        self._replies[path] = reply

    @property
    def streams_open(self) -> int:
        return self.streams_opened - self.streams_finished - self.streams_aborted

    @property
    def last_request(self) -> RecordedRequest:
        assert self.requests, "the fake upstream received no request"
        return self.requests[-1]

    async def wait_for(
        self, predicate: Callable[[], bool], timeout_s: float = 5.0, interval_s: float = 0.005
    ) -> bool:
        """Poll ``predicate`` until true or the deadline passes; returns its last value."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                return predicate()
            await asyncio.sleep(interval_s)
        return True

    # --- the server --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._respond(request)
        except asyncio.CancelledError:
            self.requests_abandoned += 1
            raise

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.headers), body)
        )
        if request.path == MODELS_PATH and request.method == "GET":
            return _json({"object": "list", "data": [_model_card("upstream-model")]})
        reply = self._replies.get(request.path)
        if reply is None:
            return _error(ErrorReply(404, f"no route {request.path}", code="not_found"))
        kind = "chat" if request.path == CHAT_PATH else "completion"
        wants_stream = isinstance(body, dict) and bool(body.get("stream"))
        return await self._answer(request, reply, body, kind, wants_stream)

    async def _answer(
        self, request: web.Request, reply: Reply, body: Any, kind: str, wants_stream: bool
    ) -> web.StreamResponse:
        if isinstance(reply, ErrorReply):
            return _error(reply)
        if isinstance(reply, Garbage):
            return web.Response(
                body=reply.body, status=reply.status, content_type=reply.content_type
            )
        if isinstance(reply, Hang):
            await self._stopping.wait()
            return _error(ErrorReply(503, "fake upstream stopped"))
        if isinstance(reply, Embeddings):
            return _json(_embeddings(reply))
        if isinstance(reply, Answer) and not wants_stream:
            return _json(_whole_answer(reply, kind))
        options = body.get("stream_options") if isinstance(body, dict) else None
        include_usage = bool((options or {}).get("include_usage"))
        return await self._stream(request, _events(reply, kind, include_usage))

    async def _stream(self, request: web.Request, events: list[_Event]) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        self.streams_opened += 1
        finished = False
        try:
            await response.prepare(request)
            for event in events:
                await event.wait()
                if event.payload == _DROP:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                self.events_sent += 1  # counted first: a client cannot see it before the count
                await response.write(event.payload)
            await response.write_eof()
            finished = True
            return response
        finally:
            if finished:
                self.streams_finished += 1
            else:
                self.streams_aborted += 1


_DROP = b"<drop the connection>"


def closed_port_url() -> str:
    """A ``base_url`` on a 127.0.0.1 port that nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # the asyncio server; aiohttp exposes no public accessor
    assert isinstance(server, asyncio.Server) and server.sockets
    return int(server.sockets[0].getsockname()[1])


def _json(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers
    )


def _error(reply: ErrorReply) -> web.Response:
    if reply.raw_body is not None:
        return web.Response(body=reply.raw_body, status=reply.status, headers=reply.headers)
    error = {"message": reply.message, "type": reply.type, "param": None, "code": reply.code}
    return _json({"error": error}, status=reply.status, headers=reply.headers)


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}


def _embeddings(reply: Embeddings) -> dict[str, Any]:
    rows = [
        {"object": "embedding", "index": index, "embedding": list(vector)}
        for index, vector in enumerate(reply.vectors)
    ]
    return {
        "object": "list",
        "data": rows[::-1],
        "model": "upstream-embedder",
        "usage": {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens},
    }


def _whole_answer(answer: Answer, kind: str) -> dict[str, Any]:
    if kind == "chat":
        choice: dict[str, Any] = {"message": {"role": "assistant", "content": answer.text}}
        obj = "chat.completion"
    else:
        choice, obj = {"text": answer.text}, "text_completion"
    choice.update(index=0, logprobs=None, finish_reason=answer.finish_reason)
    payload: dict[str, Any] = {
        "id": "up-1",
        "object": obj,
        "created": 1_700_000_000,
        "model": "m",
        "choices": [choice],
    }
    if answer.send_usage:
        payload["usage"] = answer.usage
    return payload


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk(kind: str, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
    if kind == "chat":
        delta = {} if text is None else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        obj = "chat.completion.chunk"
    else:
        choice, obj = {"index": 0, "text": text or ""}, "text_completion"
    choice.update(logprobs=None, finish_reason=finish_reason)
    return {
        "id": "up-1",
        "object": obj,
        "created": 1_700_000_000,
        "model": "m",
        "choices": [choice],
    }


@dataclass(frozen=True)
class _Event:
    """One SSE event and what the fake waits for before sending it."""

    payload: bytes
    delay_s: float = 0.0
    release: asyncio.Event | None = None

    async def wait(self) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.release is not None:
            await self.release.wait()


def _events(reply: Reply, kind: str, include_usage: bool) -> list[_Event]:
    """The SSE events of a streamed ``reply``, each maybe behind a delay or a release."""
    events: list[_Event] = []
    if kind == "chat":
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        events.append(_Event(_sse({**_chunk(kind, ""), "choices": [role]})))
    if isinstance(reply, StreamError | Drop):
        events.extend(_Event(_sse(_chunk(kind, f"part{n} "))) for n in range(reply.chunks_before))
        if isinstance(reply, Drop):
            events.append(_Event(_DROP))
        else:
            error = {"message": reply.message, "type": "server_error", "param": None, "code": None}
            events.append(_Event(_sse({"error": error})))
        return events
    assert isinstance(reply, Answer), f"cannot stream {reply!r}"
    for number, text in enumerate(reply.chunks):
        held = reply.release if number == reply.hold_after else None
        events.append(_Event(_sse(_chunk(kind, text)), delay_s=reply.delay_s, release=held))
    events.append(_Event(_sse(_chunk(kind, None if kind == "chat" else "", reply.finish_reason))))
    if include_usage and reply.send_usage:
        events.append(_Event(_sse({**_chunk(kind, None), "choices": [], "usage": reply.usage})))
    events.append(_Event(b"data: [DONE]\n\n"))
    return events
