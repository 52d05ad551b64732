"""The ``llamacpp`` backend: GGUF models run in-process by llama.cpp (the ``xllamacpp`` wheel).

llama.cpp's own server loop runs inside ``xllamacpp.Server``; it schedules ``n_parallel`` slots
with continuous batching. Every blocking call into it (loading, generating, embedding) runs in a
worker thread, never on the event loop. Streamed tokens cross back to the event loop through
``loop.call_soon_threadsafe`` into an ``asyncio.Queue``.

Invariant: a generation whose consumer has gone (the async generator closed or its task cancelled)
is stopped at its next token — the streaming callback answers ``True`` — so its slot is freed.
``active_generations`` counts llama.cpp calls that have not returned yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from openautoglm.backends.base import embeddings_unsupported
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import BackendFailure, InvalidRequestError, OpenAutoGLMError
from openautoglm.core.types import (
    Capabilities,
    Chunk,
    ContentPart,
    Embeddings,
    FinishReason,
    GenerationRequest,
    Message,
    Usage,
)

# llama.cpp log levels: 0 output only, 1 errors, 2 warnings, 3 info (its default: many per request).
_LOG_VERBOSITY = 1
_METRIC_PREFIX = "llamacpp:"
_FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


class _Done:
    """End of one llama.cpp call: what it returned or raised."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: object) -> None:
        self.outcome = outcome


class LlamaCppBackend:
    """A GGUF model served by llama.cpp in this process."""

    def __init__(self, config: InstanceConfig, model_name: str) -> None:
        self._config = config
        self._model_name = model_name
        self._server: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._active = 0
        self._cancel_events: set[threading.Event] = set()
        self.started_generations = 0
        self._capabilities = Capabilities(
            chat=True,
            completion=True,
            embeddings=config.embeddings,
            vision=bool(config.vision),
            context_length=config.context_length or config.n_ctx // config.n_parallel,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def active_generations(self) -> int:
        """llama.cpp generation calls started and not yet returned."""
        with self._lock:
            return self._active

    @property
    def model_path(self) -> Path:
        """The GGUF file this instance loads."""
        config = self._config
        if config.gguf_file and config.model_path:
            return Path(str(config.model_path)) / str(config.gguf_file)
        path = config.model_path or config.gguf_file
        if not path:
            raise BackendFailure(f"llamacpp model '{self._model_name}' needs model_path")
        return Path(path).expanduser()

    async def start(self) -> None:
        if self._server is not None:
            return
        import xllamacpp  # heavy native library: loaded only when a llamacpp model starts

        path = self.model_path
        if not path.is_file():
            raise BackendFailure(f"llamacpp model '{self._model_name}': no GGUF file at {path}")
        params = self._server_params(xllamacpp, path)
        try:
            server = await asyncio.to_thread(xllamacpp.Server, params)
        except RuntimeError as exc:
            raise BackendFailure(
                f"llama.cpp could not load model '{self._model_name}' from {path}: {exc}"
            ) from exc
        config = self._config
        self._executor = ThreadPoolExecutor(
            max_workers=max(config.n_parallel, config.max_concurrency),
            thread_name_prefix=f"llamacpp-{self._model_name}",
        )
        self._server = server

    def _server_params(self, xllamacpp: Any, path: Path) -> Any:
        config = self._config
        n_threads = config.n_threads or default_n_threads()
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = config.n_parallel
        params.n_ctx = config.n_ctx
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.endpoint_metrics = True
        params.verbosity = _LOG_VERBOSITY
        if config.embeddings:
            params.embedding = True
            # llama.cpp refuses OpenAI-style embeddings with its default pooling ("none").
            params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        return params

    async def close(self) -> None:
        server, self._server = self._server, None
        executor, self._executor = self._executor, None
        with self._lock:
            for event in self._cancel_events:
                event.set()
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        if server is not None:
            # Dropping the last reference joins llama.cpp's server loop: do that off the event loop.
            holder = [server]
            del server
            await asyncio.to_thread(holder.clear)

    async def health(self) -> bool:
        return self._server is not None

    def metrics(self) -> dict[str, float]:
        """Our gauge plus llama.cpp's counters (tokens processed, busy and queued requests)."""
        values = {"active_generations": float(self.active_generations)}
        server = self._server
        if server is not None:
            # Measured at about 0.1 ms, busy or idle: cheap enough to answer inline.
            values.update(parse_metrics(server.handle_metrics()))
        return values

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        server, executor = self._running()
        if request.kind == "chat":
            handler = server.handle_chat_completions
        else:
            handler = server.handle_completions
        body = self._request_body(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | _Done] = asyncio.Queue()
        cancel = threading.Event()

        def post(item: dict[str, Any] | _Done) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                cancel.set()
                return False
            return True

        def on_chunk(chunk: dict[str, Any]) -> bool:
            # An exception here would be swallowed by xllamacpp and leave the slot decoding.
            return cancel.is_set() or not post(chunk)

        with self._lock:
            self._active += 1
            self._cancel_events.add(cancel)
        self.started_generations += 1
        try:
            executor.submit(self._run_generation, handler, body, on_chunk, cancel, post)
        except RuntimeError as exc:  # executor shut down between _running() and here
            self._finish_generation(cancel)
            raise BackendFailure(f"llamacpp model '{self._model_name}' is closed") from exc
        try:
            async with contextlib.aclosing(_chunks_from(queue, request.kind)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            cancel.set()

    def _run_generation(
        self,
        handler: Callable[[dict[str, Any], Callable[[dict[str, Any]], bool]], object],
        body: dict[str, Any],
        on_chunk: Callable[[dict[str, Any]], bool],
        cancel: threading.Event,
        post: Callable[[dict[str, Any] | _Done], bool],
    ) -> None:
        outcome: object = None
        try:
            if not cancel.is_set():
                outcome = handler(body, on_chunk)
        except Exception as exc:  # not swallowed: the consumer raises it as one of our errors
            outcome = exc
        finally:
            self._finish_generation(cancel)
            post(_Done(outcome))

    def _finish_generation(self, cancel: threading.Event) -> None:
        with self._lock:
            self._active -= 1
            self._cancel_events.discard(cancel)

    async def embed(self, inputs: Sequence[str]) -> Embeddings:
        if not self._config.embeddings:
            raise embeddings_unsupported(self._model_name)
        if not inputs:
            return Embeddings(vectors=(), usage=Usage())
        server, executor = self._running()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                executor, server.handle_embeddings, {"input": list(inputs)}
            )
        except ValueError as exc:
            raise InvalidRequestError(f"llama.cpp refused the embedding request: {exc}") from exc
        if not isinstance(result, dict) or "data" not in result:
            raise _error_from(result)
        rows = sorted(result["data"], key=lambda row: int(row["index"]))
        vectors = tuple(tuple(float(value) for value in row["embedding"]) for row in rows)
        usage = result.get("usage") or {}
        return Embeddings(
            vectors=vectors, usage=Usage(prompt_tokens=int(usage.get("prompt_tokens", 0)))
        )

    def _running(self) -> tuple[Any, ThreadPoolExecutor]:
        if self._server is None or self._executor is None:
            raise BackendFailure(f"llamacpp model '{self._model_name}' is not started")
        return self._server, self._executor

    def _request_body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
        if request.kind == "chat":
            body["messages"] = [self._message_dict(message) for message in request.messages]
        else:
            body["prompt"] = request.prompt
        params = request.params
        optional = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": params.seed,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        stop = [text for text in params.stop if text]
        if stop:
            body["stop"] = stop
        return body

    def _message_dict(self, message: Message) -> dict[str, Any]:
        # Chat templates know "system" but rarely the newer "developer" role.
        role = "system" if message.role == "developer" else message.role
        content: str | list[dict[str, Any]] = message.text
        if self._capabilities.vision and not isinstance(message.content, str):
            content = [_part_dict(part) for part in message.content]
        entry: dict[str, Any] = {"role": role, "content": content}
        if message.name:
            entry["name"] = message.name
        return entry


async def _chunks_from(
    queue: asyncio.Queue[dict[str, Any] | _Done], kind: str
) -> AsyncGenerator[Chunk, None]:
    """Turn llama.cpp's OpenAI-shaped stream into our chunks; the last carries finish and usage."""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    while True:
        item = await queue.get()
        if isinstance(item, _Done):
            outcome = item.outcome
            if isinstance(outcome, BaseException):
                raise _error_from_exception(outcome)
            if isinstance(outcome, dict) and "error" in outcome:
                raise _error_from(outcome)
            if finish_reason is None:  # stopped from our side: the backend was closed mid-stream
                raise BackendFailure("llama.cpp stopped before the answer was finished")
            break
        if "error" in item:
            raise _error_from(item)
        usage = _usage_from(item) or usage
        for choice in item.get("choices") or ():
            text = choice.get("delta", {}).get("content") if kind == "chat" else choice.get("text")
            if text:
                yield Chunk(text=text)
            if choice.get("finish_reason"):
                finish_reason = _FINISH_REASONS.get(choice["finish_reason"], "stop")
    yield Chunk(finish_reason=finish_reason, usage=usage or Usage())


def _usage_from(chunk: dict[str, Any]) -> Usage | None:
    usage = chunk.get("usage")
    if usage:
        return Usage(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )
    timings = chunk.get("timings")
    if timings:
        return Usage(
            prompt_tokens=int(timings.get("prompt_n", 0)) + int(timings.get("cache_n", 0)),
            completion_tokens=int(timings.get("predicted_n", 0)),
        )
    return None


def _part_dict(part: ContentPart) -> dict[str, Any]:
    if part.type == "text":
        return {"type": "text", "text": part.text or ""}
    image: dict[str, Any] = {"url": part.image_url or ""}
    if part.detail:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _error_from(payload: object) -> OpenAutoGLMError:
    """Map llama.cpp's error body (``{"error": {"code", "message", "type"}}``) to our errors."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return BackendFailure(f"llama.cpp answered something unexpected: {str(payload)[:200]}")
    message = str(error.get("message", "unknown error"))
    kind = error.get("type")
    if kind == "exceed_context_size_error":
        n_prompt, n_ctx = error.get("n_prompt_tokens"), error.get("n_ctx")
        if n_prompt is not None and n_ctx is not None:
            message = (
                f"the prompt is {n_prompt} tokens, more than this model's context of {n_ctx} tokens"
            )
        return InvalidRequestError(message, code="context_length_exceeded")
    if "too large to process" in message:
        return InvalidRequestError(message, code="context_length_exceeded")
    if kind == "invalid_request_error" or error.get("code") == 400:
        return InvalidRequestError(message)
    return BackendFailure(f"llama.cpp failed: {message}")


def _error_from_exception(exc: BaseException) -> OpenAutoGLMError:
    if isinstance(exc, OpenAutoGLMError):
        return exc
    if isinstance(exc, ValueError):  # xllamacpp raises it for malformed request bodies
        return InvalidRequestError(f"llama.cpp refused the request: {exc}")
    return BackendFailure(f"llama.cpp failed: {type(exc).__name__}: {exc}")


def default_n_threads() -> int:
    """Decode threads when unset: every core but one, which the event loop and HTTP keep.

    llama.cpp's threads spin at a barrier each step, so one busy neighbour on an oversubscribed
    core stalls all of them: on 2 cores, 4 streams of 64 tokens took 3-11 s with 1 thread and
    28-109 s with 2.
    """
    return max(1, (os.cpu_count() or 1) - 1)


def parse_metrics(text: object) -> dict[str, float]:
    """Prometheus text from ``handle_metrics`` as ``{"llamacpp_<name>": value}``; else empty."""
    if not isinstance(text, str):
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(_METRIC_PREFIX):
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        with contextlib.suppress(ValueError):  # a non-numeric sample is not a value we can fold
            values["llamacpp_" + fields[0][len(_METRIC_PREFIX) :]] = float(fields[1])
    return values
