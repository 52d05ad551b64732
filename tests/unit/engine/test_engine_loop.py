"""The engine loop with a scripted runner: no torch, no model.

The fake runner answers each sampling row with ``(last token + 1) % 1000``, so every sequence's
output is known in advance whatever the batch composition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from openautoglm.core.errors import BackendFailure, ServiceUnavailableError
from openautoglm.engine.blocks import BlockManager
from openautoglm.engine.loop import EngineLoop
from openautoglm.engine.scheduler import Batch, EngineScheduler
from openautoglm.engine.sequence import FinishReason, SamplingParams, Sequence


class CountingRunner:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.forgotten: list[str] = []
        self.fail_when: Callable[[Batch], bool] = lambda batch: False
        self.gate: threading.Event | None = None

    def execute(self, batch: Batch) -> list[int | None]:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append([row.seq.seq_id for row in batch.rows])
        if self.fail_when(batch):
            raise RuntimeError("out of device memory")
        return [(row.seq.token_ids[-1] + 1) % 1000 if row.samples else None for row in batch.rows]

    def forget(self, seq_id: str) -> None:
        self.forgotten.append(seq_id)


class RecordingSink:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.endings: list[FinishReason | Exception] = []
        self.done = threading.Event()

    def on_token(self, token_id: int) -> None:
        assert not self.endings, "a token arrived after the ending"
        self.tokens.append(token_id)

    def on_finish(self, reason: FinishReason) -> None:
        self.endings.append(reason)
        self.done.set()

    def on_error(self, error: Exception) -> None:
        self.endings.append(error)
        self.done.set()


def make_loop(num_blocks: int = 64, max_num_seqs: int = 8) -> tuple[EngineLoop, CountingRunner]:
    runner = CountingRunner()
    scheduler = EngineScheduler(
        BlockManager(num_blocks, 4), max_num_seqs=max_num_seqs, max_batch_tokens=32
    )
    return EngineLoop(scheduler, runner), runner


def seq(seq_id: str, first: int = 10, max_tokens: int = 5, **kwargs: object) -> Sequence:
    return Sequence(seq_id, [first, first], SamplingParams(max_tokens=max_tokens), **kwargs)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.002)


def test_sequences_stream_their_tokens_and_end_once() -> None:
    loop, runner = make_loop()
    loop.start()
    try:
        sinks = {name: RecordingSink() for name in ("a", "b", "c")}
        for offset, (name, sink) in enumerate(sinks.items()):
            loop.submit(seq(name, first=100 * offset, max_tokens=3 + offset), sink)
        for sink in sinks.values():
            assert sink.done.wait(5)
    finally:
        loop.stop()
    assert sinks["a"].tokens == [1, 2, 3]
    assert sinks["b"].tokens == [101, 102, 103, 104]
    assert sinks["c"].tokens == [201, 202, 203, 204, 205]
    assert all(sink.endings == [FinishReason.LENGTH] for sink in sinks.values())
    assert sorted(runner.forgotten) == ["a", "b", "c"]
    assert loop.stats.generated_tokens_total == 12
    assert loop.stats.kv_blocks_used == 0 and loop.stats.running == 0


def test_a_request_joins_the_running_batch_at_the_next_step() -> None:
    loop, runner = make_loop()
    first, second = RecordingSink(), RecordingSink()
    loop.submit(seq("long", max_tokens=50), first)
    loop.run_commands()
    for _ in range(3):
        loop.step()
    loop.submit(seq("late", max_tokens=2), second)
    loop.run_commands()
    loop.step()
    assert runner.batches[-1] == ["long", "late"]
    loop.step()
    loop.step()
    assert second.endings == [FinishReason.LENGTH]
    assert runner.batches[-1] == ["long"]  # it left the moment it finished


def test_cancel_frees_memory_before_the_next_step() -> None:
    loop, _ = make_loop()
    sink = RecordingSink()
    loop.submit(seq("gone", max_tokens=100), sink)
    loop.run_commands()
    loop.step()
    assert loop.scheduler.blocks.num_used_blocks > 0
    loop.cancel("gone")
    loop.cancel("never-existed")  # harmless
    loop.run_commands()
    assert loop.scheduler.blocks.num_used_blocks == 0
    assert sink.endings == [FinishReason.CANCELLED]
    assert loop.stats.cancelled_total == 1


def test_a_failed_step_fails_its_sequences_and_the_loop_goes_on() -> None:
    loop, runner = make_loop(max_num_seqs=1)
    doomed, later = RecordingSink(), RecordingSink()
    runner.fail_when = lambda batch: any(row.seq.seq_id == "doomed" for row in batch.rows)
    loop.submit(seq("doomed"), doomed)
    loop.submit(seq("later", max_tokens=2), later)
    loop.run_commands()
    loop.step()
    assert len(doomed.endings) == 1 and isinstance(doomed.endings[0], BackendFailure)
    assert "out of device memory" in str(doomed.endings[0])
    loop.step()
    loop.step()
    assert later.tokens == [11, 12] and later.endings == [FinishReason.LENGTH]
    assert loop.stats.failed_steps_total == 1


def test_a_sequence_too_long_for_the_cache_is_refused_to_its_caller() -> None:
    loop, _ = make_loop(num_blocks=2)
    sink = RecordingSink()
    loop.submit(seq("huge", max_tokens=100), sink)
    loop.run_commands()
    assert len(sink.endings) == 1 and "KV cache" in str(sink.endings[0])
    assert not loop.scheduler.has_work


def test_priority_zero_starts_before_queued_priority_five_and_is_never_preempted() -> None:
    # Room for three sequences' blocks; four slots.
    loop, runner = make_loop(num_blocks=9, max_num_seqs=4)
    low = {f"low{i}": RecordingSink() for i in range(6)}
    for name, sink in low.items():
        loop.submit(seq(name, max_tokens=8, priority=5), sink)
    loop.run_commands()
    loop.step()
    loop.step()
    urgent = RecordingSink()
    loop.submit(seq("urgent", max_tokens=8, priority=0), urgent)
    loop.run_commands()
    preempted: list[str] = []
    original = loop.scheduler.schedule

    def schedule() -> Batch:
        batch = original()
        preempted.extend(s.seq_id for s in batch.preempted)
        return batch

    loop.scheduler.schedule = schedule  # type: ignore[method-assign]
    while loop.scheduler.has_work:
        loop.step()
    first_step = {
        name: next(i for i, b in enumerate(runner.batches) if name in b)
        for name in [*low, "urgent"]
    }
    queued = [name for name in low if first_step[name] > 2]
    assert queued and all(first_step[name] > first_step["urgent"] for name in queued)
    assert "urgent" not in preempted
    assert urgent.tokens == list(range(11, 19))


def test_stop_fails_unfinished_sequences_and_refuses_new_ones() -> None:
    loop, runner = make_loop()
    runner.gate = threading.Event()
    runner.gate.set()
    sink = RecordingSink()
    original_on_token = sink.on_token

    def on_token(token_id: int) -> None:
        original_on_token(token_id)
        if len(sink.tokens) == 3 and runner.gate is not None:
            runner.gate.clear()  # the next step blocks until the stop is under way

    sink.on_token = on_token  # type: ignore[method-assign]
    loop.start()
    loop.submit(seq("pending", max_tokens=200), sink)
    wait_for(lambda: len(sink.tokens) == 3)
    stopper = threading.Thread(target=loop.stop)
    stopper.start()
    wait_for(lambda: loop._stopping)
    runner.gate.set()
    stopper.join(5)
    assert len(sink.endings) == 1 and isinstance(sink.endings[0], ServiceUnavailableError)
    assert len(sink.tokens) < 200
    with pytest.raises(ServiceUnavailableError):
        loop.submit(seq("late"), RecordingSink())
