"""Response bodies: OpenAI's chat/completion objects and chunks, and the native generation.

Built as plain dicts and serialised with orjson: this is the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from openautoglm.core.types import Chunk, Completion, Usage
from openautoglm.routing.catalog import Instance


def json_response(payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


def model_headers(instance: Instance) -> dict[str, str]:
    """Which model, instance and (for registry models) version served a response."""
    headers = {"X-AutoGLM-Model": instance.model, "X-AutoGLM-Instance": instance.name}
    if instance.version is not None:
        headers["X-AutoGLM-Version"] = instance.version
    return headers


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What every body of one response shares."""

    id: str
    created: int
    model: str
    instance: str
    context_id: str | None = None


def _openai_body(
    meta: ResponseMeta, kind: str, content: dict[str, Any], completion: Completion
) -> dict[str, Any]:
    """OpenAI's envelope around one choice (chat and legacy completions differ only inside)."""
    choice = {**content, "index": 0, "logprobs": None, "finish_reason": completion.finish_reason}
    return {
        "id": meta.id,
        "object": kind,
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.instance,
        "choices": [choice],
        "usage": usage_dict(completion.usage),
    }


def chat_completion(meta: ResponseMeta, completion: Completion) -> dict[str, Any]:
    message = {"role": "assistant", "content": completion.text, "refusal": None}
    return _openai_body(meta, "chat.completion", {"message": message}, completion)


def text_completion(meta: ResponseMeta, completion: Completion) -> dict[str, Any]:
    return _openai_body(meta, "text_completion", {"text": completion.text}, completion)


def generation(meta: ResponseMeta, completion: Completion) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": "generation",
        "created": meta.created,
        "model": meta.model,
        "instance": meta.instance,
        "context_id": meta.context_id,
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        "usage": usage_dict(completion.usage),
    }


ChunkEncoder = Callable[[Chunk], Iterable[dict[str, Any]]]


def _choice_stream(
    meta: ResponseMeta,
    kind: str,
    include_usage: bool,
    piece: Callable[[str], dict[str, Any]],
) -> tuple[Callable[[dict[str, Any], str | None], dict[str, Any]], ChunkEncoder]:
    """OpenAI's chunk envelope and an encoder; ``piece`` shapes a text delta inside the choice
    (chat: ``{"delta": {"content": …}}``, legacy completions: ``{"text": …}``)."""

    def event(content: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": finish_reason}
        body: dict[str, Any] = {
            "id": meta.id,
            "object": kind,
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": meta.instance,
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        return body

    def encode(chunk: Chunk) -> Iterable[dict[str, Any]]:
        if chunk.text:
            yield event(piece(chunk.text), None)
        if chunk.finish_reason is not None:
            yield event(piece(""), chunk.finish_reason)
            if include_usage:
                yield {
                    **event(piece(""), None),
                    "choices": [],
                    "usage": usage_dict(chunk.usage or Usage()),
                }

    return event, encode


def _chat_delta(text: str) -> dict[str, Any]:
    return {"delta": {"content": text} if text else {}}


def chat_chunk_encoder(
    meta: ResponseMeta, include_usage: bool
) -> tuple[list[dict[str, Any]], ChunkEncoder]:
    """The opening event (assistant role) and an encoder for the rest of a chat stream."""
    event, encode = _choice_stream(meta, "chat.completion.chunk", include_usage, _chat_delta)
    return [event({"delta": {"role": "assistant", "content": ""}}, None)], encode


def text_chunk_encoder(
    meta: ResponseMeta, include_usage: bool
) -> tuple[list[dict[str, Any]], ChunkEncoder]:
    """Encoder for a legacy completions stream (no opening event)."""
    _, encode = _choice_stream(meta, "text_completion", include_usage, lambda t: {"text": t})
    return [], encode


def generation_chunk_encoder(
    meta: ResponseMeta, _include_usage: bool = True
) -> tuple[list[dict[str, Any]], ChunkEncoder]:
    """Encoder for a native generate stream: text deltas, usage always on the last event."""

    def encode(chunk: Chunk) -> Iterable[dict[str, Any]]:
        if chunk.text or chunk.finish_reason is not None:
            yield {
                "id": meta.id,
                "object": "generation.chunk",
                "model": meta.model,
                "instance": meta.instance,
                "context_id": meta.context_id,
                "text": chunk.text,
                "finish_reason": chunk.finish_reason,
                "usage": usage_dict(chunk.usage) if chunk.usage else None,
            }

    return [], encode
