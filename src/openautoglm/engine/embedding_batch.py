"""Dynamic batching for an encoder: concurrent embedding requests share forward passes.

Callers ``await batcher.embed(texts)``; their texts join one FIFO queue. A single worker task
takes up to ``max_batch_size`` texts (from any number of requests) as soon as that many wait, or
once ``batch_wait_ms`` has passed since the oldest waiting text arrived, and hands the batch to
the encoder in the executor the backend supplies (one thread). There the texts are tokenized,
ordered by token length and cut by :func:`group_by_length` so that no row is padded to more than
twice its own length; each group is one forward pass. Nothing here imports torch: the encoder is
a :class:`TextEncoder` port, and time comes from an injected clock and sleep.

Invariants:

* each caller gets its own vectors, in its input order, with the exact number of tokens its texts
  cost, or exactly one error; a batch never holds more than ``max_batch_size`` texts;
* at most one batch runs at a time, so the encoder is never entered concurrently;
* the queue never holds more than ``max_queued_texts`` texts: a request that would overflow it is
  refused whole (``ServiceUnavailableError``, code ``queue_full``) with nothing of it queued;
* a cancelled caller's queued texts leave the queue at once; those already in the running batch
  are computed and their vectors dropped;
* an encoder error fails exactly the requests with texts in that batch (their other texts leave
  the queue); the worker goes on with the next batch;
* once :meth:`EmbeddingBatcher.close` has begun, new calls and still-queued texts get
  ``ServiceUnavailableError``; ``close`` returns when the running batch, if any, has finished.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from openautoglm.core.clock import Clock, SystemClock
from openautoglm.core.errors import (
    BackendFailure,
    InvalidRequestError,
    OpenAutoGLMError,
    ServiceUnavailableError,
)
from openautoglm.core.types import Embeddings, Usage

Vector = tuple[float, ...]
Sleep = Callable[[float], Awaitable[None]]


class TextEncoder(Protocol):
    """The model as the batcher sees it; both methods run only in the worker thread."""

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text exactly as the model will see them (special tokens included,
        truncated to the model's length); their count is what a text costs."""

    def encode(self, token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        """One vector per row; the encoder pads the rows to the longest and masks the padding."""


def group_by_length(lengths: Sequence[int]) -> list[list[int]]:
    """Indices into ``lengths``, longest first, cut into groups (one forward pass each).

    Invariant: a group's first row is its longest, and every row of a group is at least half as
    long as that row, so padding never more than doubles a row; groups are as few as that allows.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index], reverse=True)
    groups: list[list[int]] = []
    for index in order:
        if groups and 2 * lengths[index] >= lengths[groups[-1][0]]:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


@dataclass(eq=False, slots=True)
class _Request:
    """One caller: its texts, the vectors found so far and the future it waits on."""

    texts: Sequence[str]
    future: asyncio.Future[Embeddings]
    vectors: list[Vector | None]
    num_missing: int
    num_queued: int
    num_tokens: int = 0


@dataclass(frozen=True, slots=True)
class _Item:
    """One text of a request, waiting in the queue."""

    request: _Request
    index: int
    arrived_s: float

    @property
    def text(self) -> str:
        return self.request.texts[self.index]


@dataclass(frozen=True, slots=True)
class _Encoded:
    """What the worker thread hands back for one batch (vectors and lengths in batch order)."""

    vectors: list[Vector]
    lengths: list[int]
    num_passes: int
    num_padding_tokens: int


@dataclass(slots=True)
class BatchCounters:
    """Running totals for ``/metrics``."""

    batches: int = 0
    texts: int = 0
    forward_passes: int = 0
    tokens: int = 0
    padding_tokens: int = 0
    failed_batches: int = 0
    dropped_texts: int = 0
    refused_requests: int = 0
    busy_s: float = 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.texts / self.batches if self.batches else 0.0


class EmbeddingBatcher:
    """Queues texts from concurrent callers and encodes them in batches, one batch at a time."""

    def __init__(
        self,
        encoder: TextEncoder,
        executor: Executor,
        *,
        max_batch_size: int,
        batch_wait_ms: float,
        max_queued_texts: int,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queued_texts < max_batch_size or batch_wait_ms < 0:
            raise ValueError("need max_batch_size >= 1, max_queued_texts >= it, batch_wait_ms >= 0")
        self._encoder = encoder
        self._executor = executor
        self.max_batch_size = max_batch_size
        self._wait_s = batch_wait_ms / 1000
        self.max_queued_texts = max_queued_texts
        self._clock = clock or SystemClock()
        self._sleep = sleep or asyncio.sleep
        self._queue: deque[_Item] = deque()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self.counters = BatchCounters()

    @property
    def num_queued(self) -> int:
        """Texts waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._work(), name="embedding-batcher"
            )

    async def close(self) -> None:
        """Refuse new work, fail what is queued, and wait for the running batch to end."""
        self._closed = True
        for item in self._queue:
            item.request.num_queued = 0
            if not item.request.future.done():
                item.request.future.set_exception(
                    ServiceUnavailableError("the encoder is shutting down", code="shutting_down")
                )
        self._queue.clear()
        self._wake.set()
        if self._task is not None:
            await self._task

    def metrics(self) -> dict[str, float]:
        counters = self.counters
        return {
            "embedding_batches_total": float(counters.batches),
            "embedding_texts_total": float(counters.texts),
            "embedding_mean_batch_size": counters.mean_batch_size,
            "embedding_forward_passes_total": float(counters.forward_passes),
            "embedding_tokens_total": float(counters.tokens),
            "embedding_padding_tokens_total": float(counters.padding_tokens),
            "embedding_failed_batches_total": float(counters.failed_batches),
            "embedding_dropped_texts_total": float(counters.dropped_texts),
            "embedding_refused_requests_total": float(counters.refused_requests),
            "embedding_queued_texts": float(len(self._queue)),
        }

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """Vectors for ``texts`` in their order; ``usage.prompt_tokens`` is what they cost."""
        self._admit(len(texts))
        if not texts:
            return Embeddings(vectors=(), usage=Usage())
        loop = asyncio.get_running_loop()
        count = len(texts)
        request = _Request(
            texts, loop.create_future(), [None] * count, num_missing=count, num_queued=count
        )
        was_idle = not self._queue
        now = self._clock.monotonic()
        self._queue.extend(_Item(request, index, now) for index in range(len(texts)))
        if was_idle or len(self._queue) >= self.max_batch_size:
            self._wake.set()  # otherwise the worker is already timing the oldest text
        try:
            return await request.future
        finally:
            self._drop(request)

    def _admit(self, num_texts: int) -> None:
        if self._closed or self._task is None:
            raise ServiceUnavailableError("the encoder is not running", code="shutting_down")
        if num_texts > self.max_queued_texts:
            raise InvalidRequestError(
                f"at most {self.max_queued_texts} inputs per request", param="input"
            )
        if len(self._queue) + num_texts > self.max_queued_texts:
            self.counters.refused_requests += 1
            raise ServiceUnavailableError(
                f"the embedding queue is full ({len(self._queue)} texts waiting)",
                code="queue_full",
                retry_after_s=self._drain_estimate_s(),
            )

    def _drain_estimate_s(self) -> float:
        counters = self.counters
        mean_batch_s = counters.busy_s / counters.batches if counters.batches else 0.0
        return max(1.0, mean_batch_s * math.ceil(len(self._queue) / self.max_batch_size))

    def _drop(self, request: _Request) -> None:
        """Take a finished or abandoned request's texts out of the queue."""
        if request.num_queued:
            self.counters.dropped_texts += request.num_queued
            self._queue = deque(item for item in self._queue if item.request is not request)
            request.num_queued = 0

    async def _work(self) -> None:
        while batch := await self._next_batch():
            await self._run_batch(batch)

    async def _next_batch(self) -> list[_Item]:
        """Wait until a batch is due (full, or its oldest text has waited ``batch_wait_ms``);
        an empty list once the batcher is closed."""
        while not self._closed:
            timeout_s: float | None = None
            if self._queue:
                if len(self._queue) >= self.max_batch_size:
                    return self._take_batch()
                timeout_s = self._queue[0].arrived_s + self._wait_s - self._clock.monotonic()
                if timeout_s <= 0:
                    return self._take_batch()
            self._wake.clear()
            await self._wait_for_wake(timeout_s)
        return []

    def _take_batch(self) -> list[_Item]:
        count = min(self.max_batch_size, len(self._queue))
        batch = [self._queue.popleft() for _ in range(count)]
        for item in batch:
            item.request.num_queued -= 1
        return batch

    async def _wait_for_wake(self, timeout_s: float | None) -> None:
        if timeout_s is None:
            await self._wake.wait()
            return
        waiters = (
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._sleep(timeout_s)),
        )
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _run_batch(self, batch: list[_Item]) -> None:
        texts = [item.text for item in batch]
        started_s = self._clock.monotonic()
        loop = asyncio.get_running_loop()
        try:
            encoded = await loop.run_in_executor(self._executor, self._encode, texts)
        # The worker must outlive any failure of the encoder: whatever it raised belongs to the
        # requests of this batch, and is handed to them rather than swallowed.
        except Exception as exc:
            self.counters.failed_batches += 1
            self._fail(batch, exc)
            return
        finally:
            self.counters.busy_s += self._clock.monotonic() - started_s
        self._count(batch, encoded)
        for item, vector, length in zip(batch, encoded.vectors, encoded.lengths, strict=True):
            self._deliver(item, vector, length)

    def _encode(self, texts: list[str]) -> _Encoded:
        """Runs in the worker thread: tokenize, group by length, one forward pass per group."""
        token_ids = self._encoder.tokenize(texts)
        lengths = [len(ids) for ids in token_ids]
        vectors: list[Vector | None] = [None] * len(texts)
        groups = group_by_length(lengths)
        padding = 0
        for group in groups:
            padding += sum(lengths[group[0]] - lengths[index] for index in group)
            rows = self._encoder.encode([token_ids[index] for index in group])
            if len(rows) != len(group):
                raise BackendFailure(f"the encoder returned {len(rows)} vectors for {len(group)}")
            for index, vector in zip(group, rows, strict=True):
                vectors[index] = vector
        return _Encoded([v for v in vectors if v is not None], lengths, len(groups), padding)

    def _count(self, batch: list[_Item], encoded: _Encoded) -> None:
        counters = self.counters
        counters.batches += 1
        counters.texts += len(batch)
        counters.forward_passes += encoded.num_passes
        counters.tokens += sum(encoded.lengths)
        counters.padding_tokens += encoded.num_padding_tokens

    def _deliver(self, item: _Item, vector: Vector, num_tokens: int) -> None:
        request = item.request
        if request.future.done():  # cancelled, or failed in an earlier batch
            return
        request.vectors[item.index] = vector
        request.num_tokens += num_tokens
        request.num_missing -= 1
        if request.num_missing == 0:
            vectors = tuple(v for v in request.vectors if v is not None)
            request.future.set_result(
                Embeddings(vectors=vectors, usage=Usage(prompt_tokens=request.num_tokens))
            )

    def _fail(self, batch: list[_Item], exc: Exception) -> None:
        for request in {id(item.request): item.request for item in batch}.values():
            if request.future.done():
                continue
            if isinstance(exc, OpenAutoGLMError):
                request.future.set_exception(exc)
            else:
                failure = BackendFailure(f"embedding failed: {exc}")
                failure.__cause__ = exc
                request.future.set_exception(failure)
            self._drop(request)
