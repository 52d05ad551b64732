"""Request bodies of the public API, validated with pydantic straight from the raw JSON bytes.

Unknown fields are ignored, as OpenAI-compatible servers commonly do, so clients that send
newer parameters keep working; fields we cannot honour yet (``n`` > 1, token-array prompts) are
refused with a 400 that names them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]
Priority = Annotated[int, Field(ge=0, le=9, description="0 highest … 9 lowest")]
DeadlineMs = Annotated[int, Field(ge=1, le=86_400_000)]
Stop = str | Annotated[list[str], Field(max_length=16)]
ContextId = Annotated[str, Field(min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class ImageUrl(_Body):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=256)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    stop: Stop | None = None
    seed: int | None = None
    top_k: int | None = Field(default=None, ge=0, le=100_000, description="0: no top-k cut")
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, max_length=64)
    user: str | None = Field(default=None, max_length=256)
    context_id: ContextId | None = None
    priority: Priority | None = None
    deadline_ms: DeadlineMs | None = None


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions`` (OpenAI-compatible)."""

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (OpenAI-compatible, legacy text completions)."""

    model: str = Field(min_length=1, max_length=200)
    prompt: str | list[str]
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None


class GenerateRequest(_Sampling):
    """``POST /v1/generate`` (native; what ``GLMClient.generate`` sends)."""

    prompt: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    stream: bool = False


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings`` (OpenAI-compatible)."""

    model: str = Field(min_length=1, max_length=200)
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Generation(BaseModel):
    """Answer of ``POST /v1/generate``."""

    id: str
    object: Literal["generation"] = "generation"
    created: int
    model: str
    instance: str
    context_id: str | None
    text: str
    finish_reason: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: OpenAI's shape."""

    error: ErrorDetail
