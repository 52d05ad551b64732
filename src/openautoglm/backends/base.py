"""The one small protocol every backend implements, and helpers shared by backends.

Invariant: nothing above ``backends`` knows which backend it talks to. A backend's ``generate``
is an async generator; closing it early (client gone, deadline passed) must free the work it
started — a local engine stops decoding, an upstream connection is released.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from openautoglm.core.errors import InvalidRequestError
from openautoglm.core.types import (
    Capabilities,
    Chunk,
    Completion,
    Embeddings,
    FinishReason,
    GenerationRequest,
    Usage,
)


class Backend(Protocol):
    """An inference backend: a local engine or an upstream server."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def start(self) -> None:
        """Load weights or open connection pools; called once before the first request."""

    async def close(self) -> None:
        """Release everything ``start`` acquired."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream the answer; the last chunk carries ``finish_reason`` and ``usage``."""

    async def embed(self, inputs: Sequence[str]) -> Embeddings:
        """Embed each input; raises ``InvalidRequestError`` where unsupported."""

    async def health(self) -> bool:
        """Whether the backend can take requests now."""

    def metrics(self) -> dict[str, float]:
        """Backend-specific gauges and counters, folded into ``/metrics``."""


# A backend that knows its tokenizer may also offer ``count_text_tokens(text) -> int``; the
# gateway then fits context windows with exact counts instead of an estimate.


async def collect(chunks: AsyncIterator[Chunk]) -> Completion:
    """Gather a chunk stream into one completion."""
    parts: list[str] = []
    finish_reason: FinishReason = "stop"
    usage = Usage()
    async for chunk in chunks:
        if chunk.text:
            parts.append(chunk.text)
        if chunk.finish_reason is not None:
            finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    return Completion(text="".join(parts), finish_reason=finish_reason, usage=usage)


def embeddings_unsupported(model: str) -> InvalidRequestError:
    """The error a backend raises when asked for embeddings it cannot make."""
    return InvalidRequestError(
        f"model '{model}' does not support embeddings", code="embeddings_not_supported"
    )


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; returns the kept text and whether a stop hit."""
    cut = min((index for s in stop if s and (index := text.find(s)) >= 0), default=-1)
    if cut < 0:
        return text, False
    return text[:cut], True
