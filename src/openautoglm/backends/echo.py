"""The ``echo`` backend: deterministic answers with injectable latency, speed and failures.

It repeats the last user message (or a configured ``reply``) word by word. Tests, demos and
benchmarks use it; later the policy, canary and rollback tests do too. ``active_generations`` counts
streams in progress, so a test can see that a disconnected client freed its generation.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import AsyncIterator, Sequence

from openautoglm.backends.base import apply_stop
from openautoglm.backends.text import count_tokens, last_user_text, prompt_text, split_words
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import BackendFailure
from openautoglm.core.types import Capabilities, Chunk, Embeddings, GenerationRequest, Usage

EMBEDDING_DIMENSIONS = 32


class EchoBackend:
    """Deterministic test backend."""

    def __init__(self, config: InstanceConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self.active_generations = 0
        self.started_generations = 0
        self.last_request: GenerationRequest | None = None  # what the model was sent (tests)
        self._capabilities = Capabilities(
            embeddings=True,
            vision=bool(config.vision),
            context_length=config.context_length or 32_768,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def health(self) -> bool:
        return True

    def metrics(self) -> dict[str, float]:
        return {"active_generations": float(self.active_generations)}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.started_generations += 1
        self.active_generations += 1
        self.last_request = request
        try:
            async for chunk in self._generate(request):
                yield chunk
        finally:
            self.active_generations -= 1

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        config = self._config
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        if config.fail_rate and self._rng.random() < config.fail_rate:
            raise BackendFailure(f"echo instance '{config.name}' injected a failure")
        answer = config.reply if config.reply is not None else last_user_text(request)
        answer, stopped = apply_stop(answer, request.params.stop)
        words = split_words(answer)
        limit = request.params.max_tokens
        finish = "stop"
        if limit is not None and count_tokens(answer) > limit:
            words = _first_tokens(words, limit)
            finish = "length"
        if stopped:
            finish = "stop"
        delay_s = 1 / config.tokens_per_s if config.tokens_per_s else 0.0
        completion_tokens = 0
        for word in words:
            if delay_s:
                await asyncio.sleep(delay_s)
            completion_tokens += 0 if word.isspace() else 1
            yield Chunk(text=word)
        usage = Usage(
            prompt_tokens=count_tokens(prompt_text(request)), completion_tokens=completion_tokens
        )
        yield Chunk(finish_reason=finish, usage=usage)  # type: ignore[arg-type]

    async def embed(self, inputs: Sequence[str]) -> Embeddings:
        vectors = tuple(_hash_vector(text) for text in inputs)
        usage = Usage(prompt_tokens=sum(count_tokens(text) for text in inputs))
        return Embeddings(vectors=vectors, usage=usage)


def _first_tokens(words: list[str], limit: int) -> list[str]:
    kept: list[str] = []
    count = 0
    for word in words:
        if not word.isspace():
            if count == limit:
                break
            count += 1
        kept.append(word)
    return kept


def _hash_vector(text: str) -> tuple[float, ...]:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:EMBEDDING_DIMENSIONS]]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return tuple(value / norm for value in raw)
