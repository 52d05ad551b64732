"""Plain value types of the request path, shared by the gateway and every backend.

A :class:`GenerationRequest` is the one normalised shape of every inference call, whatever its entry
point (chat, completion or native generate). A backend answers it with an async stream of
:class:`Chunk`; the last chunk carries ``finish_reason`` and, where known, ``usage``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = Literal["stop", "length", "content_filter"]
RequestKind = Literal["chat", "completion"]


@dataclass(frozen=True, slots=True)
class ContentPart:
    """One part of a multi-part message: text, or an image given by URL (``data:`` URLs too)."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message; ``content`` is plain text or a tuple of parts."""

    role: Role
    content: str | tuple[ContentPart, ...]
    name: str | None = None

    @property
    def text(self) -> str:
        """The text of the message with non-text parts left out."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")

    @property
    def has_images(self) -> bool:
        """Whether any part of the message is an image."""
        return not isinstance(self.content, str) and any(
            part.type == "image_url" for part in self.content
        )


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Decoding parameters. ``None`` means the backend's own default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One inference call, normalised. ``messages`` for chat, ``prompt`` for completions."""

    request_id: str
    model: str
    kind: RequestKind
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    params: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    user: str | None = None
    context_id: str | None = None
    tenant_id: str | None = None
    priority: int | None = None  # 0 highest ... 9 lowest
    deadline_ms: int | None = None  # the caller's budget, from arrival
    version: str | None = None  # a registry version asked for (X-AutoGLM-Version), else routed

    @property
    def has_images(self) -> bool:
        """Whether the request carries image parts (needs a vision-capable backend)."""
        return any(message.has_images for message in self.messages)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of generated text; the final chunk has ``finish_reason`` set."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-streamed) answer, gathered from the chunks."""

    text: str
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Vectors for a list of inputs, in input order."""

    vectors: tuple[tuple[float, ...], ...]
    usage: Usage


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do; the gateway refuses requests a backend cannot take."""

    chat: bool = True
    completion: bool = True
    embeddings: bool = False
    vision: bool = False
    context_length: int | None = None
