"""The embedding micro-batcher with a fake encoder, a manual clock and a manual executor.

Nothing here sleeps or starts a thread: time moves only when a test advances it, and a batch is
encoded only when a test runs the executor's pending job, so every interleaving is chosen by the
test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any

import pytest

from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import BackendFailure, InvalidRequestError, ServiceUnavailableError
from openautoglm.core.types import Embeddings
from openautoglm.engine.embedding_batch import EmbeddingBatcher, Vector, group_by_length


class ManualExecutor(Executor):
    """Holds each submitted job until the test runs it."""

    def __init__(self) -> None:
        self.pending: list[tuple[Future[Any], Callable[[], Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.pending.append((future, lambda: fn(*args, **kwargs)))
        return future

    def run_next(self) -> None:
        future, job = self.pending.pop(0)
        future.set_running_or_notify_cancel()
        try:
            future.set_result(job())
        except Exception as exc:  # handed to the awaiting batcher, as a real executor would
            future.set_exception(exc)


class FakeTime:
    """A manual clock whose ``sleep`` returns when the test advances past its end."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.clock.monotonic() + seconds, future))
        await future

    def advance_ms(self, ms: float) -> None:
        self.clock.advance(ms / 1000)
        now = self.clock.monotonic()
        for end, future in self._sleepers:
            if end <= now + 1e-12 and not future.done():
                future.set_result(None)
        self._sleepers = [(end, f) for end, f in self._sleepers if not f.done()]


class FakeEncoder:
    """One token per word; a text's vector is (number of tokens, sum of word lengths).

    A text containing ``boom`` makes ``encode`` fail. Every call is recorded.
    """

    def __init__(self) -> None:
        self.tokenized: list[list[str]] = []
        self.encoded: list[list[int]] = []

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        self.tokenized.append(list(texts))
        return [[len(word) for word in text.split()] for text in texts]

    def encode(self, token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        self.encoded.append([len(ids) for ids in token_ids])
        if any(4 in ids and 99 in ids for ids in token_ids):
            raise RuntimeError("boom")
        return [(float(len(ids)), float(sum(ids))) for ids in token_ids]


def vector(text: str) -> Vector:
    words = text.split()
    return (float(len(words)), float(sum(len(word) for word in words)))


class Rig:
    def __init__(self, **options: Any) -> None:
        self.time = FakeTime()
        self.executor = ManualExecutor()
        self.encoder = FakeEncoder()
        settings = {"max_batch_size": 4, "batch_wait_ms": 5.0, "max_queued_texts": 16, **options}
        self.batcher = EmbeddingBatcher(
            self.encoder, self.executor, clock=self.time.clock, sleep=self.time.sleep, **settings
        )
        self.batcher.start()

    def call(self, *texts: str) -> asyncio.Task[Embeddings]:
        return asyncio.get_running_loop().create_task(self.batcher.embed(list(texts)))

    async def run_batch(self) -> None:
        await settle()
        assert self.executor.pending, "no batch was handed to the executor"
        self.executor.run_next()
        await settle()


async def settle(rounds: int = 10) -> None:
    """Let every ready task run: yields only, the clock does not move."""
    for _ in range(rounds):
        await asyncio.sleep(0)


BOOM = "boom " + "x" * 99  # token ids 4 and 99: FakeEncoder fails on it


# --- grouping by length ---------------------------------------------------------------------


def test_groups_are_longest_first_few_and_padding_never_doubles_a_row() -> None:
    lengths = [3, 40, 8, 21, 5, 39, 2, 16]
    groups = group_by_length(lengths)

    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert [lengths[i] for group in groups for i in group] == sorted(lengths, reverse=True)
    for group in groups:
        assert all(2 * lengths[i] >= lengths[group[0]] for i in group)
    assert [[lengths[i] for i in group] for group in groups] == [[40, 39, 21], [16, 8], [5, 3], [2]]
    assert group_by_length([7, 7, 7]) == [[0, 1, 2]]
    assert group_by_length([]) == []


# --- when a batch runs ----------------------------------------------------------------------


async def test_a_full_batch_runs_without_waiting_for_the_window() -> None:
    rig = Rig(max_batch_size=4, batch_wait_ms=10_000)
    calls = [rig.call(f"text {i}") for i in range(4)]

    await rig.run_batch()

    assert rig.encoder.tokenized == [["text 0", "text 1", "text 2", "text 3"]]
    assert [call.result().vectors for call in calls] == [(vector(f"text {i}"),) for i in range(4)]
    assert rig.batcher.counters.batches == 1 and rig.batcher.counters.mean_batch_size == 4


async def test_a_partial_batch_waits_for_the_window_from_the_oldest_text() -> None:
    rig = Rig(max_batch_size=8, batch_wait_ms=5)
    first = rig.call("one")
    await settle()
    rig.time.advance_ms(3)
    second = rig.call("two words")
    await settle()
    rig.time.advance_ms(1)
    await settle()
    assert rig.executor.pending == []  # 4 ms after the first text: still waiting

    rig.time.advance_ms(1)  # 5 ms after the first text, 2 ms after the second
    await rig.run_batch()

    assert rig.encoder.tokenized == [["one", "two words"]]
    assert first.result().vectors == (vector("one"),)
    assert second.result().vectors == (vector("two words"),)


async def test_a_zero_window_sends_what_is_waiting_at_once() -> None:
    rig = Rig(max_batch_size=8, batch_wait_ms=0)
    call = rig.call("now")

    await rig.run_batch()

    assert call.result().vectors == (vector("now"),)


async def test_texts_that_arrive_during_a_batch_form_the_next_one() -> None:
    rig = Rig(max_batch_size=2, batch_wait_ms=5)
    first = rig.call("a", "b")
    await settle()
    later = [rig.call("c"), rig.call("d"), rig.call("e")]
    await rig.run_batch()  # a, b: full
    await rig.run_batch()  # c, d: full, no wait
    assert rig.executor.pending == [] and not later[2].done()
    rig.time.advance_ms(5)
    await rig.run_batch()  # e: its window has passed

    assert rig.encoder.tokenized == [["a", "b"], ["c", "d"], ["e"]]
    assert first.result().vectors == (vector("a"), vector("b"))
    assert all(call.done() for call in later)


# --- what callers get -----------------------------------------------------------------------


async def test_vectors_come_back_in_input_order_though_encoded_longest_first() -> None:
    rig = Rig(max_batch_size=8, batch_wait_ms=0)
    texts = ["a", "a b c d e f g h", "a b", "a b c d e", "a b c"]
    call = rig.call(*texts)

    await rig.run_batch()

    assert rig.encoder.encoded == [[8, 5], [3, 2], [1]]  # rows padded at most 2x
    assert call.result().vectors == tuple(vector(text) for text in texts)
    assert call.result().usage.prompt_tokens == 1 + 8 + 2 + 5 + 3
    assert rig.batcher.counters.padding_tokens == (8 - 5) + (3 - 2)
    assert rig.batcher.counters.forward_passes == 3


async def test_a_request_larger_than_a_batch_spans_batches_and_keeps_its_order() -> None:
    rig = Rig(max_batch_size=4, batch_wait_ms=5)
    texts = [" ".join(["w"] * (i + 1)) for i in range(10)]
    big = rig.call(*texts)
    other = rig.call("other text")

    await rig.run_batch()
    await rig.run_batch()
    rig.time.advance_ms(5)
    await rig.run_batch()  # the last two of ``big`` with ``other``

    assert [len(batch) for batch in rig.encoder.tokenized] == [4, 4, 3]
    assert big.result().vectors == tuple(vector(text) for text in texts)
    assert big.result().usage.prompt_tokens == sum(range(1, 11))
    assert other.result().vectors == (vector("other text"),)


async def test_an_empty_request_needs_no_batch() -> None:
    rig = Rig()
    result = await rig.batcher.embed([])
    assert result.vectors == () and result.usage.prompt_tokens == 0
    assert rig.executor.pending == []


# --- cancellation ---------------------------------------------------------------------------


async def test_a_cancelled_callers_waiting_texts_are_never_encoded() -> None:
    rig = Rig(max_batch_size=2, batch_wait_ms=5)
    running = rig.call("r1", "r2")
    await settle()
    gone = rig.call("gone", "gone too")
    kept = rig.call("kept")
    await settle()
    assert rig.batcher.num_queued == 3

    gone.cancel()
    await settle()
    assert gone.cancelled() and rig.batcher.num_queued == 1
    await rig.run_batch()  # r1, r2
    rig.time.advance_ms(5)
    await rig.run_batch()  # kept alone

    assert rig.encoder.tokenized == [["r1", "r2"], ["kept"]]
    assert running.result().vectors == (vector("r1"), vector("r2"))
    assert kept.result().vectors == (vector("kept"),)
    assert rig.batcher.counters.dropped_texts == 2


async def test_cancelling_during_a_running_batch_leaves_the_other_callers_alone() -> None:
    rig = Rig(max_batch_size=2, batch_wait_ms=5)
    gone = rig.call("gone")
    kept = rig.call("kept")
    await settle()
    assert len(rig.executor.pending) == 1  # the batch is running

    gone.cancel()
    await settle()
    rig.executor.run_next()
    await settle()

    assert gone.cancelled()
    assert kept.result().vectors == (vector("kept"),)


async def test_the_window_restarts_from_the_next_text_when_the_oldest_is_cancelled() -> None:
    rig = Rig(max_batch_size=8, batch_wait_ms=5)
    gone = rig.call("gone")
    await settle()
    rig.time.advance_ms(4)
    kept = rig.call("kept")
    await settle()
    gone.cancel()
    await settle()
    rig.time.advance_ms(1)  # the cancelled text's window ends: nothing to send yet
    await settle()
    assert rig.executor.pending == []

    rig.time.advance_ms(4)  # 5 ms after "kept"
    await rig.run_batch()

    assert rig.encoder.tokenized == [["kept"]]
    assert kept.result().vectors == (vector("kept"),)


# --- errors ---------------------------------------------------------------------------------


async def test_an_encoder_error_fails_only_the_requests_of_its_batch() -> None:
    rig = Rig(max_batch_size=2, batch_wait_ms=0)
    bad = rig.call(BOOM)
    neighbour = rig.call("same batch")
    await settle()
    later = rig.call("next batch")

    await rig.run_batch()
    await rig.run_batch()

    with pytest.raises(BackendFailure, match="boom"):
        bad.result()
    with pytest.raises(BackendFailure):
        neighbour.result()
    assert later.result().vectors == (vector("next batch"),)
    assert rig.batcher.counters.failed_batches == 1


async def test_a_failed_request_loses_its_texts_still_in_the_queue() -> None:
    rig = Rig(max_batch_size=2, batch_wait_ms=0)
    spanning = rig.call(BOOM, "x", "left in the queue")
    await settle()
    assert rig.batcher.num_queued == 1

    await rig.run_batch()

    with pytest.raises(BackendFailure):
        spanning.result()
    assert rig.batcher.num_queued == 0 and rig.executor.pending == []


# --- limits and lifecycle -------------------------------------------------------------------


async def test_a_full_queue_refuses_the_whole_request() -> None:
    rig = Rig(max_batch_size=2, batch_wait_ms=5, max_queued_texts=4)
    running = rig.call("a", "b")
    await settle()
    waiting = rig.call("c", "d", "e")
    await settle()

    with pytest.raises(ServiceUnavailableError) as refused:
        await rig.batcher.embed(["f", "g"])
    assert refused.value.code == "queue_full" and refused.value.retry_after_s is not None
    assert rig.batcher.num_queued == 3 and rig.batcher.counters.refused_requests == 1

    fits = rig.call("f")
    await rig.run_batch()
    await rig.run_batch()
    await rig.run_batch()
    assert running.done() and waiting.done() and fits.done()


async def test_a_request_larger_than_the_queue_is_invalid() -> None:
    rig = Rig(max_batch_size=2, max_queued_texts=4)
    with pytest.raises(InvalidRequestError):
        await rig.batcher.embed(["t"] * 5)


async def test_closing_fails_the_queue_waits_for_the_running_batch_and_refuses_more() -> None:
    rig = Rig(max_batch_size=1, batch_wait_ms=0)
    running = rig.call("running")
    await settle()
    queued = rig.call("queued")
    await settle()

    closing = asyncio.get_running_loop().create_task(rig.batcher.close())
    await settle()
    with pytest.raises(ServiceUnavailableError):
        queued.result()
    assert not closing.done()  # the running batch has not finished
    rig.executor.run_next()
    await settle()

    assert closing.done() and running.result().vectors == (vector("running"),)
    with pytest.raises(ServiceUnavailableError):
        await rig.batcher.embed(["late"])


async def test_a_batcher_not_started_refuses_work() -> None:
    batcher = EmbeddingBatcher(
        FakeEncoder(), ManualExecutor(), max_batch_size=2, batch_wait_ms=1, max_queued_texts=4
    )
    with pytest.raises(ServiceUnavailableError):
        await batcher.embed(["x"])


async def test_metrics_count_batches_texts_and_the_mean_batch_size() -> None:
    rig = Rig(max_batch_size=3, batch_wait_ms=0)
    calls = [rig.call("a b"), rig.call("c"), rig.call("d")]
    await rig.run_batch()
    calls.append(rig.call("e"))
    await rig.run_batch()

    assert all(call.done() for call in calls)
    metrics = rig.batcher.metrics()
    assert metrics["embedding_batches_total"] == 2
    assert metrics["embedding_texts_total"] == 4
    assert metrics["embedding_mean_batch_size"] == 2
    assert metrics["embedding_tokens_total"] == 5
    assert metrics["embedding_queued_texts"] == 0
