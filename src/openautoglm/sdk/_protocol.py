"""The wire format, shared by both clients: request bodies in, result values out, no I/O.

Request builders leave out every parameter that is ``None``, so the server's defaults apply.
Response parsers accept any JSON the contract allows and raise :class:`APIResponseError` for the
rest; :func:`failure_from_response` turns an error answer into the error to raise plus the retry
decision, so the sync and async clients differ only in how they wait and send.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from openautoglm.sdk.errors import APIResponseError, APIStatusError, error_from_response
from openautoglm.sdk.retry import Retrier
from openautoglm.sdk.types import ChatMessages, ChatResult, Generation, Usage

StreamKind = Literal["generate", "chat"]

_NO_KEY_HINT = " (no API key configured: pass api_key= or set AUTOGLM_API_KEY)"


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One call to make; ``stream_kind`` is set when the answer is a Server-Sent Events stream."""

    method: str
    path: str
    body: Mapping[str, Any] | None = None
    stream_kind: StreamKind | None = None

    @property
    def is_stream(self) -> bool:
        """Whether the answer is read incrementally as a stream."""
        return self.stream_kind is not None


MODELS_REQUEST = ApiRequest("GET", "/v1/models")


def _without_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def build_generate_request(prompt: str, *, stream: bool, **fields: Any) -> ApiRequest:
    """``POST /v1/generate`` with ``prompt`` and the given non-``None`` fields."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    body = {"prompt": prompt, **_without_none(fields)}
    if stream:
        body["stream"] = True
    return ApiRequest("POST", "/v1/generate", body, "generate" if stream else None)


def _normalize_messages(messages: ChatMessages) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    normalized = [dict(message) for message in messages]
    if not normalized:
        raise ValueError("messages must not be empty")
    return normalized


def build_chat_request(
    messages: ChatMessages, *, stream: bool, extra: Mapping[str, Any], **fields: Any
) -> ApiRequest:
    """``POST /v1/chat/completions``; ``extra`` body fields cannot override the named ones."""
    body: dict[str, Any] = {
        **extra,
        "messages": _normalize_messages(messages),
        **_without_none(fields),
    }
    if stream:
        body["stream"] = True
        # Without it an OpenAI-format stream never reports usage.
        body.setdefault("stream_options", {"include_usage": True})
    else:
        body.pop("stream", None)
    return ApiRequest("POST", "/v1/chat/completions", body, "chat" if stream else None)


def decode_json_body(content: bytes, request_id: str | None) -> Mapping[str, Any]:
    """The JSON object of a successful answer."""
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise APIResponseError(
            f"server answered with invalid JSON: {exc}", request_id=request_id
        ) from exc
    if not isinstance(data, dict):
        raise APIResponseError(
            "server answered with JSON that is not an object", request_id=request_id
        )
    return data


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_zero(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_usage(value: object) -> Usage | None:
    """A :class:`Usage` from a ``usage`` object; ``None`` when there is none."""
    if not isinstance(value, dict):
        return None
    prompt_tokens = _int_or_zero(value.get("prompt_tokens"))
    completion_tokens = _int_or_zero(value.get("completion_tokens"))
    total = value.get("total_tokens")
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens if total is None else _int_or_zero(total),
    )


def parse_generation(body: Mapping[str, Any], request_id: str | None) -> Generation:
    """A :class:`Generation` from a ``/v1/generate`` answer."""
    text = body.get("text")
    if not isinstance(text, str):
        raise APIResponseError("generation answer has no text", request_id=request_id)
    created = body.get("created")
    return Generation(
        text=text,
        usage=parse_usage(body.get("usage")) or Usage(),
        id=_str_or_none(body.get("id")) or "",
        model=_str_or_none(body.get("model")) or "",
        finish_reason=_str_or_none(body.get("finish_reason")),
        context_id=_str_or_none(body.get("context_id")),
        instance=_str_or_none(body.get("instance")),
        version=_str_or_none(body.get("version")),
        created=created if isinstance(created, int) else None,
        request_id=request_id,
    )


def first_choice(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``choices[0]`` of an OpenAI-format answer or chunk, if there is one."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def parse_chat_result(body: Mapping[str, Any], request_id: str | None) -> ChatResult:
    """A :class:`ChatResult` from an OpenAI ChatCompletion body."""
    choice = first_choice(body)
    if choice is None:
        raise APIResponseError("chat answer has no choices", request_id=request_id)
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return ChatResult(
        text=content if isinstance(content, str) else "",
        usage=parse_usage(body.get("usage")) or Usage(),
        id=_str_or_none(body.get("id")) or "",
        model=_str_or_none(body.get("model")) or "",
        finish_reason=_str_or_none(choice.get("finish_reason")),
        raw=body,
        request_id=request_id,
    )


def parse_model_ids(body: Mapping[str, Any], request_id: str | None) -> list[str]:
    """The model ids of an OpenAI model list."""
    data = body.get("data")
    if not isinstance(data, list):
        raise APIResponseError("model list has no data", request_id=request_id)
    return [
        item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)
    ]


def request_id_of(response: httpx.Response) -> str | None:
    """The server's ``X-Request-Id`` for this answer."""
    request_id: str | None = response.headers.get("x-request-id")
    return request_id


def failure_from_response(
    response: httpx.Response, *, attempt: int, retrier: Retrier, has_api_key: bool
) -> tuple[APIStatusError, float | None]:
    """The error for an already-read error answer, and the wait before a retry (``None``: raise)."""
    retry_after_s = retrier.retry_after_s(response.headers)
    error = error_from_response(
        response.status_code,
        response.content,
        response.headers,
        retry_after_s=retry_after_s,
        hint=_NO_KEY_HINT if response.status_code == 401 and not has_api_key else "",
    )
    return error, retrier.delay_after_status(attempt, response.status_code, retry_after_s)
