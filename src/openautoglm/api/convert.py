"""From validated HTTP bodies and headers to the one ``GenerationRequest`` of the request path."""

from __future__ import annotations

from starlette.datastructures import Headers

from openautoglm.api.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    GenerateRequest,
    TextPart,
    _Sampling,
)
from openautoglm.core.errors import InvalidRequestError
from openautoglm.core.types import ContentPart, GenerationRequest, Message, SamplingParams


def _stop(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _params(body: _Sampling, max_tokens: int | None) -> SamplingParams:
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=max_tokens,
        stop=_stop(body.stop),
        seed=body.seed,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        stop_token_ids=tuple(body.stop_token_ids or ()),
    )


def _context_id(body: _Sampling, headers: Headers) -> str | None:
    header = headers.get("x-autoglm-context-id")
    if header is not None and not 0 < len(header) <= 200:
        raise InvalidRequestError(
            "X-AutoGLM-Context-Id must be 1-200 characters", param="context_id"
        )
    return body.context_id or header


def _version(headers: Headers) -> str | None:
    version = headers.get("x-autoglm-version")
    if version is not None and not 0 < len(version) <= 100:
        raise InvalidRequestError("X-AutoGLM-Version must be 1-100 characters", param="version")
    return version


def _require_single_choice(n: int) -> None:
    if n != 1:
        raise InvalidRequestError(
            "Only n=1 is supported; ask again for more choices.",
            code="unsupported_value",
            param="n",
        )


def _message(message: ChatMessage) -> Message:
    content = message.content
    if content is None or isinstance(content, str):
        return Message(role=message.role, content=content or "", name=message.name)
    parts = tuple(
        ContentPart(type="text", text=part.text)
        if isinstance(part, TextPart)
        else ContentPart(
            type="image_url", image_url=part.image_url.url, detail=part.image_url.detail
        )
        for part in content
    )
    return Message(role=message.role, content=parts, name=message.name)


def chat_request(
    body: ChatCompletionRequest, request_id: str, headers: Headers
) -> GenerationRequest:
    _require_single_choice(body.n)
    return GenerationRequest(
        request_id=request_id,
        model=body.model,
        kind="chat",
        messages=tuple(_message(message) for message in body.messages),
        params=_params(body, body.max_completion_tokens or body.max_tokens),
        stream=body.stream,
        user=body.user,
        context_id=_context_id(body, headers),
        priority=body.priority,
        deadline_ms=body.deadline_ms,
        version=_version(headers),
    )


def completion_request(
    body: CompletionRequest, request_id: str, headers: Headers
) -> GenerationRequest:
    _require_single_choice(body.n)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequestError(
                "Only one prompt per request is supported.",
                code="unsupported_value",
                param="prompt",
            )
        prompt = prompt[0]
    return GenerationRequest(
        request_id=request_id,
        model=body.model,
        kind="completion",
        prompt=prompt,
        params=_params(body, body.max_tokens),
        stream=body.stream,
        user=body.user,
        context_id=_context_id(body, headers),
        priority=body.priority,
        deadline_ms=body.deadline_ms,
        version=_version(headers),
    )


def generate_request(
    body: GenerateRequest, request_id: str, headers: Headers, default_model: str | None
) -> GenerationRequest:
    """Native generate is a one-turn chat: the prompt becomes the user message."""
    return GenerationRequest(
        request_id=request_id,
        model=body.model or default_model or "",
        kind="chat",
        messages=(Message(role="user", content=body.prompt),),
        params=_params(body, body.max_tokens),
        stream=body.stream,
        user=body.user,
        context_id=_context_id(body, headers),
        priority=body.priority,
        deadline_ms=body.deadline_ms,
        version=_version(headers),
    )
