"""The ``transformers`` backend on the continuous-batching engine (``batching: true``, the default).

Requests become engine sequences; the engine thread runs every live request in each forward pass
and streams tokens back, which are detokenised here, on the event loop. Priority (0 highest) and
``deadline_ms`` order the engine's waiting queue like the gateway's scheduler does.

Invariants: the event loop never runs model code; an abandoned stream (client gone, deadline,
stop string) cancels its sequence, which frees its KV memory before the engine's next step;
streamed text never holds an incomplete character or a stop string; a request with a ``seed``
samples from its own generator, so its answer does not depend on what else is in the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from openautoglm.backends.base import embeddings_unsupported
from openautoglm.backends.detokenize import IncrementalDetokenizer
from openautoglm.backends.hf_model import DEFAULT_MAX_NEW_TOKENS, LoadedModel, load_model
from openautoglm.config.settings import ConfigError, InstanceConfig
from openautoglm.core.errors import BackendFailure, InvalidRequestError, ServiceUnavailableError
from openautoglm.core.types import (
    Capabilities,
    Chunk,
    Embeddings,
    GenerationRequest,
    Usage,
)
from openautoglm.core.types import FinishReason as ChunkFinish
from openautoglm.engine.blocks import BlockManager
from openautoglm.engine.loop import EngineLoop, StepRunner
from openautoglm.engine.scheduler import EngineScheduler
from openautoglm.engine.sequence import FinishReason
from openautoglm.engine.sequence import SamplingParams as EngineSampling
from openautoglm.engine.sequence import Sequence as EngineSequence

DEFAULT_PRIORITY = 5  # the gateway scheduler's default class (SchedulerConfig.default_priority)


@dataclass(slots=True)
class _Ending:
    reason: FinishReason | None = None
    error: Exception | None = None


class _QueueSink:
    """Hands a sequence's results from the engine thread to its request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[int | _Ending] = asyncio.Queue()

    def _post(self, item: int | _Ending) -> None:
        # A closed loop (RuntimeError) means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def on_token(self, token_id: int) -> None:
        self._post(token_id)

    def on_finish(self, reason: FinishReason) -> None:
        self._post(_Ending(reason=reason))

    def on_error(self, error: Exception) -> None:
        self._post(_Ending(error=error))


def _prepared(loaded: LoadedModel, config: InstanceConfig) -> Any:
    if config.dtype == "float32" and config.quantization == "none":
        return loaded.model
    from openautoglm.engine.model.precision import apply_precision

    return apply_precision(loaded.model, config.dtype, config.quantization, config.device)


def load_for_rank(config: dict[str, Any]) -> Any:
    """Load the model of a tensor-parallel worker rank (top level, so it pickles by name)."""
    instance = InstanceConfig(**config)
    return _prepared(load_model(instance), instance)


def build_runner(loaded: LoadedModel, config: InstanceConfig, num_blocks: int) -> StepRunner:
    """The model runner for ``config``: precision applied, tensor-parallel when asked."""
    from openautoglm.engine.model.pipeline import PipelineParallelRunner
    from openautoglm.engine.model.runner import ModelRunner, TensorParallelRunner

    loaded.model = _prepared(loaded, config)
    tensor, stages = config.tensor_parallel_size, config.pipeline_parallel_size
    parallel: Any = TensorParallelRunner if stages == 1 else PipelineParallelRunner
    world_size = max(tensor, stages)
    cores = os.cpu_count() or 1
    try:
        if world_size == 1:
            # One core is left to the event loop: torch's threads stall at every barrier when
            # one of them has to wait for a core (measured: 16 ms instead of 0.5 ms per matmul).
            threads = config.n_threads or max(1, cores - 1)
            return ModelRunner(
                loaded.model,
                num_blocks=num_blocks,
                block_size=config.block_size,
                num_threads=threads,
            )
        runner: StepRunner = parallel(
            loaded.model,
            functools.partial(load_for_rank, config.model_dump()),
            world_size=world_size,
            num_blocks=num_blocks,
            block_size=config.block_size,
            num_threads=config.n_threads or max(1, cores // world_size),
        )
        return runner
    except ValueError as exc:
        raise BackendFailure(f"{exc}; set `batching: false` to serve it one at a time") from exc


class BatchingTransformersBackend:
    """In-process Hugging Face causal LM served by the continuous-batching engine."""

    def __init__(
        self, config: InstanceConfig, model_name: str, *, rng: random.Random | None = None
    ) -> None:
        if config.max_batch_tokens < config.max_num_seqs:
            raise ConfigError(
                f"model '{model_name}': max_batch_tokens ({config.max_batch_tokens}) must be "
                f">= max_num_seqs ({config.max_num_seqs})"
            )
        if config.compile:
            raise ConfigError(
                f"model '{model_name}': `compile` is not used by the batching engine: on CPU "
                "torch.compile gave +8% decode speed for a 170 s compile (BENCHMARKS.md), and the "
                "engine's changing batch shapes would recompile; set `batching: false` to use it"
            )
        if config.tensor_parallel_size > 1 and config.quantization != "none":
            raise ConfigError(
                f"model '{model_name}': int8 weights cannot be split across tensor-parallel "
                "ranks yet; use pipeline_parallel_size or quantization: none"
            )
        if config.pipeline_parallel_size > 1 and config.tensor_parallel_size > 1:
            raise ConfigError(
                f"model '{model_name}': the built-in engine runs tensor or pipeline "
                "parallelism, not both; use backend 'vllm' to combine them"
            )
        self._config = config
        self._model_name = model_name
        self._rng = rng or random.Random()
        self._ids = itertools.count()
        self._loaded: LoadedModel | None = None
        self._engine: EngineLoop | None = None

    @property
    def capabilities(self) -> Capabilities:
        loaded = self._loaded
        return Capabilities(
            chat=loaded is None or loaded.has_chat_template,
            vision=False,
            context_length=self._config.context_length if loaded is None else self.context_length,
        )

    @property
    def context_length(self) -> int:
        """The longest prompt + answer served: the model's window, capped by the KV cache."""
        loaded = self._require_loaded()
        return min(loaded.context_length, self._config.kv_cache_tokens)

    @property
    def engine(self) -> EngineLoop:
        """The running engine loop (for tools and tests)."""
        if self._engine is None:
            raise ServiceUnavailableError(f"model '{self._model_name}' is not loaded")
        return self._engine

    @property
    def model(self) -> Any:
        return self._require_loaded().model

    @property
    def tokenizer(self) -> Any:
        return self._require_loaded().tokenizer

    def count_text_tokens(self, text: str) -> int:
        """Exact token count with the model's own tokenizer (used to fit context windows)."""
        return self._require_loaded().count_text_tokens(text)

    async def start(self) -> None:
        if self._engine is not None:
            return
        self._engine = await asyncio.to_thread(self._build)
        self._engine.start()

    def _build(self) -> EngineLoop:
        config = self._config
        loaded = load_model(config)
        num_blocks = config.kv_cache_tokens // config.block_size
        runner = build_runner(loaded, config, num_blocks)
        blocks = BlockManager(num_blocks, config.block_size, prefix_caching=config.prefix_caching)
        scheduler = EngineScheduler(
            blocks, max_num_seqs=config.max_num_seqs, max_batch_tokens=config.max_batch_tokens
        )
        self._loaded = loaded
        return EngineLoop(scheduler, runner, name=f"engine-{self._model_name}")

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.stop)
            close_runner = getattr(engine.runner, "close", None)
            if close_runner is not None:
                await asyncio.to_thread(close_runner)

    async def health(self) -> bool:
        return self._engine is not None

    def metrics(self) -> dict[str, float]:
        if self._engine is None:
            return {}
        stats = self._engine.stats
        blocks = self._engine.scheduler.blocks
        return {
            "engine_running_sequences": float(stats.running),
            "engine_waiting_sequences": float(stats.waiting),
            "engine_kv_blocks_used": float(stats.kv_blocks_used),
            "engine_kv_blocks_total": float(blocks.num_blocks),
            "engine_steps_total": float(stats.steps_total),
            "engine_generated_tokens_total": float(stats.generated_tokens_total),
            "engine_prefill_tokens_total": float(stats.prefill_tokens_total),
            "engine_preemptions_total": float(stats.preemptions_total),
            "engine_cancelled_total": float(stats.cancelled_total),
            "engine_failed_steps_total": float(stats.failed_steps_total),
            "engine_last_batch_size": float(stats.last_batch_size),
        }

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        engine = self.engine
        loaded = self._require_loaded()
        if request.has_images:
            raise InvalidRequestError(f"model '{self._model_name}' does not accept images")
        if request.kind == "chat" and not loaded.has_chat_template:
            raise InvalidRequestError(
                f"model '{self._model_name}' has no chat template", code="chat_not_supported"
            )
        seq = self._sequence(request, loaded)
        sink = _QueueSink(asyncio.get_running_loop())
        engine.submit(seq, sink)
        ended = False
        try:
            async for chunk in self._stream(seq, sink, loaded, request.params.stop):
                if chunk.finish_reason is not None:
                    ended = True
                yield chunk
        finally:
            if not ended and self._engine is engine:
                engine.cancel(seq.seq_id)

    async def _stream(
        self, seq: EngineSequence, sink: _QueueSink, loaded: LoadedModel, stops: Sequence[str]
    ) -> AsyncIterator[Chunk]:
        pieces: list[str] = []
        detokenizer = IncrementalDetokenizer(loaded.decode, pieces.append, stops)
        completion_tokens = 0
        ending: _Ending | None = None
        while ending is None:
            item = await sink.queue.get()
            if isinstance(item, _Ending):
                ending = item
                break
            completion_tokens += 1
            detokenizer.feed((item,))
            if detokenizer.stop_hit:
                ending = _Ending(reason=FinishReason.STOP)
            elif pieces:
                yield Chunk(text="".join(pieces))
                pieces.clear()
        if ending.error is not None:
            raise ending.error
        if ending.reason is FinishReason.CANCELLED:
            raise ServiceUnavailableError(f"model '{self._model_name}' is shutting down")
        if not detokenizer.stop_hit:
            detokenizer.end()
        if pieces:
            yield Chunk(text="".join(pieces))
        finish: ChunkFinish = "length" if ending.reason is FinishReason.LENGTH else "stop"
        yield Chunk(finish_reason=finish, usage=Usage(seq.num_prompt_tokens, completion_tokens))

    def _sequence(self, request: GenerationRequest, loaded: LoadedModel) -> EngineSequence:
        prompt = loaded.encode(request)
        room = self.context_length - len(prompt)
        if room <= 0:
            raise InvalidRequestError(
                f"the prompt has {len(prompt)} tokens; the context is {self.context_length}",
                code="context_length_exceeded",
            )
        params = request.params
        wanted = DEFAULT_MAX_NEW_TOKENS if params.max_tokens is None else params.max_tokens
        now = time.monotonic()
        deadline = None if request.deadline_ms is None else now + request.deadline_ms / 1000
        priority = DEFAULT_PRIORITY if request.priority is None else request.priority
        return EngineSequence(
            f"{request.request_id}#{next(self._ids)}",
            prompt,
            self._sampling(request, loaded, min(room, wanted)),
            priority=priority,
            deadline=deadline,
            arrival_s=now,
        )

    def _sampling(
        self, request: GenerationRequest, loaded: LoadedModel, max_tokens: int
    ) -> EngineSampling:
        defaults = loaded.model.generation_config
        params = request.params
        temperature = params.temperature
        if temperature is None:
            temperature = (defaults.temperature or 1.0) if defaults.do_sample else 0.0
        top_p = params.top_p if params.top_p is not None else (defaults.top_p or 1.0)
        top_k = params.top_k if params.top_k is not None else (defaults.top_k or 0)
        penalty = params.repetition_penalty
        if penalty is None:
            penalty = defaults.repetition_penalty or 1.0
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        return EngineSampling(
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k),
            seed=seed,
            max_tokens=max_tokens,
            stop_token_ids=loaded.eos_ids | frozenset(params.stop_token_ids),
            repetition_penalty=float(penalty),
        )

    async def embed(self, inputs: Sequence[str]) -> Embeddings:
        raise embeddings_unsupported(self._model_name)

    def _require_loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise ServiceUnavailableError(f"model '{self._model_name}' is not loaded")
        return self._loaded
