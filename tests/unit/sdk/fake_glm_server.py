"""A fake Open-AutoGLM server speaking the contract the SDK relies on (an ASGI app, no I/O here).

Unqueued requests get the real server's happy path (the answer echoes the prompt). A test queues
:class:`Reply` scripts to get errors, retries and odd streams; every request is recorded in
``seen``. ``conftest`` runs it with uvicorn on a free 127.0.0.1 port.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "sk-agl-test"
ENV_VARS = (
    "AUTOGLM_API_KEY",
    "AUTOGLM_BASE_URL",
    "AUTOGLM_REGIONS",
    "AUTOGLM_REGIONS_FILE",
)


def sse(payload: object) -> str:
    """One SSE event carrying ``payload`` as JSON (or as is, for ``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n"


def error_body(message: str, error_type: str, code: str, param: str | None = None) -> object:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


@dataclass(frozen=True)
class Reply:
    """A scripted answer: JSON, raw bytes, or a stream sent as the given text chunks."""

    status: int = 200
    json: object = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    chunks: Sequence[str] | None = None


@dataclass(frozen=True)
class Seen:
    """A request as the server received it; header names are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str]
    json: Any


class FakeServer:
    """State of the fake: queued replies and the requests seen so far."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[Seen] = []
        self._replies: deque[Reply] = deque()
        routes = [
            Route("/v1/generate", self._handle, methods=["POST"]),
            Route("/v1/chat/completions", self._handle, methods=["POST"]),
            Route("/v1/models", self._handle, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes)

    def queue(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        self._replies.extend(replies)

    def reset(self) -> None:
        """Forget queued replies and seen requests."""
        self._replies.clear()
        self.seen.clear()

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        body: Any = json.loads(raw) if raw else None
        self.seen.append(Seen(request.method, request.url.path, dict(request.headers), body))
        headers = {"X-Request-Id": f"req-{len(self.seen)}"}
        if self._replies:
            return _render(self._replies.popleft(), headers)
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            unauthorized = error_body("invalid API key", "authentication_error", "invalid_api_key")
            return JSONResponse(unauthorized, status_code=401, headers=headers)
        if request.url.path == "/v1/models":
            models = [{"id": name, "object": "model"} for name in ("glm-4", "echo-pool")]
            return JSONResponse({"object": "list", "data": models}, headers=headers)
        if request.url.path == "/v1/generate":
            return _generate(body, headers)
        return _chat(body, headers)


def _render(reply: Reply, headers: dict[str, str]) -> Response:
    all_headers = {**headers, **reply.headers}
    if reply.chunks is not None:
        return _stream(reply.chunks, all_headers, reply.status)
    if reply.body is not None:
        return Response(reply.body, status_code=reply.status, headers=all_headers)
    return JSONResponse(reply.json, status_code=reply.status, headers=all_headers)


def _stream(chunks: Sequence[str], headers: dict[str, str], status: int = 200) -> Response:
    async def body() -> AsyncIterator[str]:
        for chunk in chunks:
            yield chunk

    return StreamingResponse(
        body(), status_code=status, headers=headers, media_type="text/event-stream"
    )


def _usage(prompt: str, text: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = len(prompt.split()), len(text.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [f" {word}" for word in words[1:]]


def _generate(body: dict[str, Any], headers: dict[str, str]) -> Response:
    prompt = body["prompt"]
    text = f"echo: {prompt}"
    model = body.get("model", "echo-pool")
    usage = _usage(prompt, text)
    if not body.get("stream"):
        answer = {
            "id": "gen-1",
            "object": "generation",
            "created": 1700000000,
            "model": model,
            "instance": "echo-pool/a",
            "context_id": body.get("context_id"),
            "text": text,
            "finish_reason": "stop",
            "usage": usage,
        }
        return JSONResponse(answer, headers=headers)
    base = {"id": "gen-1", "object": "generation.chunk", "model": model}
    chunks = [
        sse({**base, "text": piece, "finish_reason": None, "usage": None})
        for piece in _pieces(text)
    ]
    chunks.append(sse({**base, "text": "", "finish_reason": "stop", "usage": usage}))
    chunks.append(sse("[DONE]"))
    return _stream(chunks, headers)


def _chat(body: dict[str, Any], headers: dict[str, str]) -> Response:
    prompt = body["messages"][-1]["content"]
    text = f"reply: {prompt}"
    model = body.get("model", "glm-4")
    usage = _usage(prompt, text)
    base = {"id": "chatcmpl-1", "created": 1700000000, "model": model}
    if not body.get("stream"):
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        answer = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        return JSONResponse(answer, headers=headers)

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return sse({**base, "object": "chat.completion.chunk", "choices": [choice]})

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in _pieces(text)]
    chunks.append(chunk({}, "stop"))
    if body.get("stream_options", {}).get("include_usage"):
        chunks.append(
            sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        )
    chunks.append(sse("[DONE]"))
    return _stream(chunks, headers)
