"""The ``transformers`` backend: a Hugging Face causal LM (HF folder or GGUF) run in this process.

Nothing is downloaded (``local_files_only``); torch and transformers are imported by ``start()``.
Invariants: the event loop never runs model code (loading in ``asyncio.to_thread``, the rest in one
model thread, so one request uses the model at a time, first come first served); an abandoned
stream stops decoding at the next token, and its model work is over once the generator has closed;
streamed text never holds an incomplete character or a stop string; sampling uses a generator of
each request's own, so a ``seed`` reproduces an answer and the global torch RNG is left alone.
"""

from __future__ import annotations

import asyncio
import copy
import random
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from openautoglm.backends.base import embeddings_unsupported
from openautoglm.backends.detokenize import IncrementalDetokenizer
from openautoglm.backends.hf_model import DEFAULT_MAX_NEW_TOKENS, LoadedModel, load_model
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import (
    BackendFailure,
    InvalidRequestError,
    OpenAutoGLMError,
    ServiceUnavailableError,
)
from openautoglm.core.types import (
    Capabilities,
    Chunk,
    Embeddings,
    FinishReason,
    GenerationRequest,
    Usage,
)


@dataclass(eq=False, slots=True)
class _Job:
    """One generation handed to the model thread; ``queue`` gets text deltas, then ``None``."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[str | None]
    seed: int
    cancel: threading.Event = field(default_factory=threading.Event)

    def post(self, item: str | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()


@dataclass(frozen=True, slots=True)
class _Outcome:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    cancelled: bool = False


class _Engine:
    """The loaded model and tokenizer; every method runs in the model thread."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.torch = loaded.torch
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self.has_chat_template = loaded.has_chat_template
        self.eos_ids = loaded.eos_ids

    def run(self, job: _Job) -> _Outcome:
        """Generate for ``job``, posting text deltas and then ``None`` to its queue."""
        try:
            return self._run(job)
        except OpenAutoGLMError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise BackendFailure(f"generation failed: {exc}") from exc
        finally:
            job.post(None)

    def _run(self, job: _Job) -> _Outcome:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        input_ids, attention_mask = self._encode(job.request)
        prompt_tokens = int(input_ids.shape[-1])
        room = self.context_length - prompt_tokens
        if room <= 0:
            raise InvalidRequestError(
                f"the prompt has {prompt_tokens} tokens; the context is {self.context_length}",
                code="context_length_exceeded",
            )
        params = job.request.params
        max_new = min(
            room, DEFAULT_MAX_NEW_TOKENS if params.max_tokens is None else params.max_tokens
        )
        if job.cancel.is_set() or max_new <= 0:
            return _Outcome(prompt_tokens, 0, "length", cancelled=job.cancel.is_set())
        streamer = IncrementalDetokenizer(self._decode, job.post, params.stop, job.cancel)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self._generation_config(max_new),
            logits_processor=LogitsProcessorList(self._sampler(job)),
            stopping_criteria=StoppingCriteriaList([_Cancelled(self.torch, job.cancel)]),
            streamer=streamer,
        )
        new_ids = output[0, prompt_tokens:].tolist()
        hit_limit = len(new_ids) >= max_new and new_ids[-1] not in self.eos_ids
        finish: FinishReason = "length" if hit_limit and not streamer.stop_hit else "stop"
        cancelled = job.cancel.is_set() and not streamer.stop_hit
        return _Outcome(prompt_tokens, len(new_ids), finish, cancelled=cancelled)

    def _encode(self, request: GenerationRequest) -> tuple[Any, Any]:
        ids = self.torch.tensor([self.loaded.encode(request)], device=self.model.device)
        return ids, self.torch.ones_like(ids)

    def _decode(self, ids: list[int]) -> str:
        return self.loaded.decode(ids)

    def _generation_config(self, max_new_tokens: int) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        # Sampling is done by our own logits processor; generate itself only picks the argmax.
        config.do_sample = False
        config.temperature = config.top_p = config.top_k = None
        config.max_new_tokens = max_new_tokens
        config.max_length = None
        return config

    def _sampler(self, job: _Job) -> list[Any]:
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        defaults = self.model.generation_config
        params = job.request.params
        temperature = params.temperature
        do_sample = bool(defaults.do_sample) if temperature is None else temperature > 0
        if not do_sample:
            return []
        temperature = temperature if temperature is not None else (defaults.temperature or 1.0)
        top_p = params.top_p if params.top_p is not None else defaults.top_p
        warpers: list[Any] = []
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(float(temperature)))
        if defaults.top_k:
            warpers.append(TopKLogitsWarper(int(defaults.top_k)))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(float(top_p)))
        generator = self.torch.Generator(device=self.model.device).manual_seed(job.seed)
        return [_Sampler(self.torch, warpers, generator)]


class _Cancelled:
    """Stopping criterion: stop once the job's cancel event is set (consumer gone, stop string)."""

    def __init__(self, torch: Any, event: threading.Event) -> None:
        self._torch = torch
        self._event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        stop = self._event.is_set()
        return self._torch.full((input_ids.shape[0],), stop, device=input_ids.device)


class _Sampler:
    """Logits processor that samples with the request's generator; greedy search then takes it."""

    def __init__(self, torch: Any, warpers: list[Any], generator: Any) -> None:
        self._torch = torch
        self._warpers = warpers
        self._generator = generator

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for warper in self._warpers:
            scores = warper(input_ids, scores)
        probs = self._torch.softmax(scores, dim=-1)
        chosen = self._torch.multinomial(probs, num_samples=1, generator=self._generator)
        picked = self._torch.full_like(scores, float("-inf"))
        return picked.scatter_(1, chosen, 0.0)


def _load_compiled(config: InstanceConfig) -> LoadedModel:
    """Load the model; with ``compile: true`` its forward pass goes through torch.compile
    (inductor: +8% decode measured on CPU, after a compile of minutes on first use)."""
    loaded = load_model(config)
    if config.compile:
        loaded.model.forward = loaded.torch.compile(loaded.model.forward)
    return loaded


class TransformersBackend:
    """In-process Hugging Face causal LM; one generation uses the model at a time."""

    def __init__(
        self, config: InstanceConfig, model_name: str, *, rng: random.Random | None = None
    ) -> None:
        self._config = config
        self._model_name = model_name
        self._rng = rng or random.Random()
        self._engine: _Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._model_free = asyncio.Lock()
        self._jobs: set[_Job] = set()
        self.active_generations = 0
        self._waiting = 0
        self._totals = dict.fromkeys(
            ("generations_total", "prompt_tokens_total", "completion_tokens_total"), 0.0
        )

    @property
    def capabilities(self) -> Capabilities:
        engine = self._engine
        return Capabilities(
            chat=engine is None or engine.has_chat_template,
            vision=bool(self._config.vision),
            context_length=self._config.context_length if engine is None else engine.context_length,
        )

    @property
    def model(self) -> Any:
        """The loaded transformers model (for tools and tests)."""
        return self._require_engine().model

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer (for tools and tests)."""
        return self._require_engine().tokenizer

    def count_text_tokens(self, text: str) -> int:
        """Exact token count with the model's own tokenizer (used to fit context windows)."""
        return len(self._require_engine().tokenizer.encode(text, add_special_tokens=False))

    async def start(self) -> None:
        if self._engine is not None:
            return
        engine = _Engine(await asyncio.to_thread(_load_compiled, self._config))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformers")
        self._engine = engine

    async def close(self) -> None:
        if self._engine is None:
            return
        self._engine = None
        for job in self._jobs:
            job.cancel.set()
        async with self._model_free:  # the model thread has finished its last job
            pass
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def health(self) -> bool:
        return self._engine is not None

    def metrics(self) -> dict[str, float]:
        active, waiting = float(self.active_generations), float(self._waiting)
        return {"active_generations": active, "waiting_generations": waiting, **self._totals}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        engine = self._require_engine()
        if request.has_images and not self._config.vision:
            raise InvalidRequestError(f"model '{self._model_name}' does not accept images")
        if request.kind == "chat" and not engine.has_chat_template:
            raise InvalidRequestError(
                f"model '{self._model_name}' has no chat template", code="chat_not_supported"
            )
        seed = request.params.seed if request.params.seed is not None else self._rng.getrandbits(63)
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue(), seed)
        self._jobs.add(job)
        self.active_generations += 1
        future: asyncio.Future[_Outcome] | None = None
        try:
            future = await self._submit(engine, job)
            while (piece := await job.queue.get()) is not None:
                yield Chunk(text=piece)
            await asyncio.wait([future])
            outcome = future.result()
            if outcome.cancelled:
                raise ServiceUnavailableError(f"model '{self._model_name}' is shutting down")
            usage = Usage(outcome.prompt_tokens, outcome.completion_tokens)
            yield Chunk(finish_reason=outcome.finish_reason, usage=usage)
        finally:
            job.cancel.set()
            try:
                if future is not None and not future.done():
                    await asyncio.wait([future])
            finally:
                self._jobs.discard(job)
                self.active_generations -= 1

    async def embed(self, inputs: Sequence[str]) -> Embeddings:
        raise embeddings_unsupported(self._model_name)

    async def _submit(self, engine: _Engine, job: _Job) -> asyncio.Future[_Outcome]:
        """Wait for the model, then run ``job`` in the model thread, which frees it when done."""
        self._waiting += 1
        try:
            await self._model_free.acquire()
        finally:
            self._waiting -= 1
        if self._engine is not engine or self._executor is None:
            self._model_free.release()
            raise ServiceUnavailableError(f"model '{self._model_name}' is shutting down")
        future = asyncio.get_running_loop().run_in_executor(self._executor, engine.run, job)
        future.add_done_callback(self._on_work_done)
        return future

    def _on_work_done(self, future: asyncio.Future[_Outcome]) -> None:
        self._model_free.release()
        if future.cancelled() or future.exception() is not None:
            return
        outcome = future.result()
        self._totals["generations_total"] += 1
        self._totals["prompt_tokens_total"] += outcome.prompt_tokens
        self._totals["completion_tokens_total"] += outcome.completion_tokens

    def _require_engine(self) -> _Engine:
        if self._engine is None:
            raise ServiceUnavailableError(f"model '{self._model_name}' is not loaded")
        return self._engine
