"""Inference routes: OpenAI-compatible chat, completions, embeddings, models; native generate.

Handlers read the raw body and validate it with pydantic in one step (no framework body
parsing on the hot path); their schemas are still published in OpenAPI via ``openapi_extra``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from openautoglm.api import convert, responses
from openautoglm.api.context import (
    authenticate,
    request_id_of,
    services_of,
    trace_of,
    unix_time,
)
from openautoglm.api.disconnect import unless_disconnected
from openautoglm.api.responses import ChunkEncoder
from openautoglm.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ErrorBody,
    GenerateRequest,
    Generation,
    ModelList,
    StreamOptions,
)
from openautoglm.api.streaming import sse_response
from openautoglm.core.errors import InvalidRequestError
from openautoglm.core.types import Completion, GenerationRequest
from openautoglm.gateway.pipeline import Gateway
from openautoglm.routing.catalog import Instance, model_not_found
from openautoglm.tenancy.model import Principal

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 413, 429, 500, 502, 503, 504)
}


def body_schema(model: type) -> dict[str, Any]:
    """``openapi_extra`` that documents a JSON request body we validate ourselves."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


REQUEST_MODELS = (ChatCompletionRequest, CompletionRequest, GenerateRequest, EmbeddingRequest)
router = APIRouter(prefix="/v1", responses=ERRORS)


async def _start(request: Request) -> tuple[Gateway, Principal, bytes]:
    gateway = services_of(request).gateway
    principal = await authenticate(request)
    return gateway, principal, await request.body()


@dataclass(frozen=True, slots=True)
class _Shape:
    """How one endpoint answers: id prefix, whole-answer body, stream encoder."""

    id_prefix: str
    whole: Callable[[responses.ResponseMeta, Completion], dict[str, Any]]
    stream: Callable[[responses.ResponseMeta, bool], tuple[list[dict[str, Any]], ChunkEncoder]]


_CHAT = _Shape("chatcmpl-", responses.chat_completion, responses.chat_chunk_encoder)
_TEXT = _Shape("cmpl-", responses.text_completion, responses.text_chunk_encoder)
_NATIVE = _Shape("gen-", responses.generation, responses.generation_chunk_encoder)


async def _answer(
    request: Request,
    gateway: Gateway,
    principal: Principal,
    generation: GenerationRequest,
    shape: _Shape,
    include_usage: bool = False,
) -> Response:
    """Run ``generation`` and answer in ``shape``: one JSON body, or an SSE stream."""

    def meta(instance: Instance) -> responses.ResponseMeta:
        return responses.ResponseMeta(
            id=shape.id_prefix + request_id_of(request),
            created=unix_time(),
            model=generation.model,
            instance=instance.name,
            context_id=generation.context_id,
        )

    trace = trace_of(request)
    if generation.stream:
        opened = await gateway.open_stream(principal, generation, trace)
        preamble, encode = shape.stream(meta(opened.instance), include_usage)
        headers = {**responses.model_headers(opened.instance), **opened.headers}
        return sse_response(opened, preamble, encode, headers, trace)
    answer = await unless_disconnected(request, gateway.complete(principal, generation, trace))
    return responses.json_response(
        shape.whole(meta(answer.instance), answer.completion),
        {**responses.model_headers(answer.instance), **answer.headers},
    )


def _include_usage(options: StreamOptions | None) -> bool:
    return bool(options and options.include_usage)


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI-compatible; streams with SSE)",
    openapi_extra=body_schema(ChatCompletionRequest),
)
async def create_chat_completion(request: Request) -> Response:
    gateway, principal, raw = await _start(request)
    body = ChatCompletionRequest.model_validate_json(raw)
    generation = convert.chat_request(body, request_id_of(request), request.headers)
    return await _answer(
        request, gateway, principal, generation, _CHAT, _include_usage(body.stream_options)
    )


@router.post(
    "/completions",
    summary="Create a text completion (OpenAI-compatible, legacy)",
    openapi_extra=body_schema(CompletionRequest),
)
async def create_completion(request: Request) -> Response:
    gateway, principal, raw = await _start(request)
    body = CompletionRequest.model_validate_json(raw)
    generation = convert.completion_request(body, request_id_of(request), request.headers)
    return await _answer(
        request, gateway, principal, generation, _TEXT, _include_usage(body.stream_options)
    )


@router.post(
    "/generate",
    summary="Generate text for a prompt (native API of GLMClient.generate)",
    response_model=Generation,
    openapi_extra=body_schema(GenerateRequest),
)
async def generate(request: Request) -> Response:
    gateway, principal, raw = await _start(request)
    body = GenerateRequest.model_validate_json(raw)
    generation = convert.generate_request(
        body, request_id_of(request), request.headers, gateway.catalog.default_model
    )
    return await _answer(request, gateway, principal, generation, _NATIVE)


@router.post(
    "/embeddings",
    summary="Create embeddings (OpenAI-compatible) where the model supports it",
    openapi_extra=body_schema(EmbeddingRequest),
)
async def create_embeddings(request: Request) -> Response:
    gateway, principal, raw = await _start(request)
    body = EmbeddingRequest.model_validate_json(raw)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    instance, embeddings = await gateway.embed(principal, body.model, inputs, trace_of(request))
    data = [
        {"object": "embedding", "index": index, "embedding": _encode_vector(vector, body)}
        for index, vector in enumerate(embeddings.vectors)
    ]
    usage = embeddings.usage
    payload = {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
    }
    return responses.json_response(payload, responses.model_headers(instance))


def _encode_vector(vector: tuple[float, ...], body: EmbeddingRequest) -> Any:
    if body.dimensions is not None and body.dimensions != len(vector):
        raise InvalidRequestError(
            f"model '{body.model}' makes {len(vector)}-dimensional embeddings",
            code="unsupported_value",
            param="dimensions",
        )
    if body.encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return list(vector)


@router.get("/models", summary="List the models this key may use", response_model=ModelList)
async def list_models(request: Request) -> Response:
    gateway = services_of(request).gateway
    principal = await authenticate(request)
    created = services_of(request).started_at
    data = [
        {"id": model.name, "object": "model", "created": created, "owned_by": "openautoglm"}
        for model in gateway.visible_models(principal)
    ]
    return responses.json_response({"object": "list", "data": data})


@router.get("/models/{model_id:path}", summary="Describe one model")
async def retrieve_model(model_id: str, request: Request) -> Response:
    gateway = services_of(request).gateway
    principal = await authenticate(request)
    if model_id not in {model.name for model in gateway.visible_models(principal)}:
        raise model_not_found(model_id)
    model = gateway.catalog.get(model_id)
    return responses.json_response(
        {
            "id": model.name,
            "object": "model",
            "created": services_of(request).started_at,
            "owned_by": "openautoglm",
        }
    )


HOT_HANDLERS = {
    "/v1/chat/completions": create_chat_completion,
    "/v1/completions": create_completion,
    "/v1/generate": generate,
    "/v1/embeddings": create_embeddings,
}
