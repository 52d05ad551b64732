"""The step scheduler: admission order, budgets, chunked prefill, preemption and cancellation."""

from __future__ import annotations

import pytest

from openautoglm.core.errors import InvalidRequestError, NotFoundError
from openautoglm.engine.blocks import BlockManager
from openautoglm.engine.scheduler import Batch, EngineScheduler
from openautoglm.engine.sequence import FinishReason, SamplingParams, Sequence, SequenceState


def make(
    num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8, max_batch_tokens: int = 64
) -> EngineScheduler:
    return EngineScheduler(
        BlockManager(num_blocks, block_size),
        max_num_seqs=max_num_seqs,
        max_batch_tokens=max_batch_tokens,
    )


def seq(
    seq_id: str,
    num_prompt: int = 4,
    *,
    priority: int = 4,
    deadline: float | None = None,
    arrival_s: float = 0.0,
    max_tokens: int = 4,
) -> Sequence:
    return Sequence(
        seq_id,
        [1] * num_prompt,
        SamplingParams(max_tokens=max_tokens, stop_token_ids=frozenset({0})),
        priority=priority,
        deadline=deadline,
        arrival_s=arrival_s,
    )


def step(scheduler: EngineScheduler, token: int = 7) -> tuple[Batch, list[Sequence]]:
    """One engine step with a fake runner that samples ``token`` wherever a row samples."""
    batch = scheduler.schedule()
    tokens = [token if row.samples else None for row in batch.rows]
    return batch, scheduler.postprocess(batch, tokens)


def ids(seqs: list[Sequence]) -> list[str]:
    return [s.seq_id for s in seqs]


def test_admission_follows_priority_then_deadline_then_arrival() -> None:
    scheduler = make(max_num_seqs=3)
    for s in [
        seq("low", priority=7, arrival_s=0.0),
        seq("mid-late", priority=3, arrival_s=2.0),
        seq("mid-deadline", priority=3, deadline=50.0, arrival_s=3.0),
        seq("mid-early", priority=3, arrival_s=1.0),
        seq("top", priority=0, arrival_s=4.0),
    ]:
        scheduler.add(s)
    batch = scheduler.schedule()
    assert ids(scheduler.running) == ["top", "mid-deadline", "mid-early"]
    assert {row.seq.seq_id for row in batch.prefills} == {"top", "mid-deadline", "mid-early"}
    assert ids(scheduler.waiting) == ["mid-late", "low"]


def test_a_sequence_joins_at_the_next_step_and_leaves_when_it_finishes() -> None:
    scheduler = make()
    scheduler.add(seq("a", max_tokens=2))
    batch, finished = step(scheduler)
    assert [row.is_prefill for row in batch.rows] == [True] and finished == []
    scheduler.add(seq("b", max_tokens=5))
    batch, finished = step(scheduler)
    assert [(row.seq.seq_id, row.is_prefill) for row in batch.rows] == [
        ("a", False),
        ("b", True),
    ]
    assert ids(finished) == ["a"]
    a = finished[0]
    assert a.finish_reason is FinishReason.LENGTH and a.block_table == []
    assert ids(scheduler.running) == ["b"]


def test_a_stop_token_finishes_and_frees_at_once() -> None:
    scheduler = make(num_blocks=4)
    scheduler.add(seq("a"))
    _, finished = step(scheduler, token=0)
    assert ids(finished) == ["a"] and finished[0].finish_reason is FinishReason.STOP
    assert scheduler.blocks.num_free_blocks == 4 and not scheduler.has_work


def test_the_token_budget_is_respected_and_prefill_is_chunked_over_steps() -> None:
    scheduler = make(max_batch_tokens=10)
    scheduler.add(seq("long", num_prompt=25))
    scheduler.add(seq("short", num_prompt=3))
    chunks = []
    for _ in range(3):
        batch, _ = step(scheduler)
        assert batch.num_tokens <= 10
        chunks.append([(row.seq.seq_id, row.num_new_tokens) for row in batch.rows])
    assert chunks[0] == [("long", 10)]
    assert chunks[1] == [("long", 10)]
    assert chunks[2] == [("long", 5), ("short", 3)]  # longest first inside a step
    long_seq = scheduler.running[0]
    assert long_seq.num_output_tokens == 1 and long_seq.is_decoding


def test_max_num_seqs_caps_the_running_set() -> None:
    scheduler = make(max_num_seqs=2)
    for n in range(4):
        scheduler.add(seq(f"s{n}", arrival_s=n))
    for _ in range(3):
        batch, _ = step(scheduler)
        assert len(batch.rows) <= 2
    assert ids(scheduler.running) == ["s0", "s1"]


def test_memory_pressure_preempts_the_lowest_priority_running_sequence() -> None:
    # 3 blocks of 2: each sequence takes one block for its prompt, then needs a second to decode.
    scheduler = make(num_blocks=3, block_size=2, max_batch_tokens=8)
    scheduler.add(seq("high", num_prompt=2, priority=1))
    scheduler.add(seq("mid", num_prompt=2, priority=4, deadline=5.0))
    scheduler.add(seq("low", num_prompt=2, priority=4))
    step(scheduler)  # all three prefill and sample a token
    batch, _ = step(scheduler)
    assert ids(batch.preempted) == ["low", "mid"]
    assert [row.seq.seq_id for row in batch.decodes] == ["high"]
    for victim in batch.preempted:
        assert victim.state is SequenceState.WAITING and victim.block_table == []
        assert victim.num_output_tokens == 1  # kept; recomputed on readmission
    assert scheduler.blocks.num_free_blocks == 1


def test_preemption_never_takes_a_higher_priority_sequence() -> None:
    scheduler = make(num_blocks=2, block_size=2, max_batch_tokens=8)
    scheduler.add(seq("high", num_prompt=2, priority=0, max_tokens=2))
    scheduler.add(seq("low", num_prompt=2, priority=9, max_tokens=2))
    step(scheduler)
    batch, finished = step(scheduler)
    # the cache is full; "high" needs a block, so "low" goes, never the other way round
    assert ids(batch.preempted) == ["low"]
    assert [row.seq.seq_id for row in batch.decodes] == ["high"]
    assert ids(finished) == ["high"] and ids(scheduler.waiting) == ["low"]
    _, finished = step(scheduler)  # "low" recomputes prompt + its token and samples its last
    assert ids(finished) == ["low"] and finished[0].num_output_tokens == 2


def test_a_waiting_high_priority_sequence_preempts_a_lower_one_for_memory() -> None:
    scheduler = make(num_blocks=3, block_size=4, max_batch_tokens=16)
    scheduler.add(seq("low", num_prompt=8, priority=9))
    step(scheduler)
    scheduler.add(seq("urgent", num_prompt=4, priority=0))
    batch, _ = step(scheduler)
    assert ids(batch.preempted) == ["low"]
    assert [row.seq.seq_id for row in batch.rows] == ["urgent"]  # low's decode row is dropped
    assert ids(scheduler.waiting) == ["low"]


def test_an_equal_priority_arrival_waits_rather_than_preempting() -> None:
    scheduler = make(num_blocks=3, block_size=4, max_batch_tokens=16)
    scheduler.add(seq("first", num_prompt=8, priority=4))
    step(scheduler)
    scheduler.add(seq("second", num_prompt=4, priority=4))
    batch, _ = step(scheduler)
    assert batch.preempted == [] and ids(scheduler.waiting) == ["second"]


def test_a_waiting_high_priority_sequence_is_not_starved_by_later_low_ones() -> None:
    # "hog" outranks "big", so "big" waits for memory; the smalls would fit but may not pass it.
    scheduler = make(num_blocks=5, block_size=4, max_num_seqs=4, max_batch_tokens=32)
    scheduler.add(seq("hog", num_prompt=12, priority=1, max_tokens=3))
    step(scheduler)
    scheduler.add(seq("big", num_prompt=8, priority=2))
    for n in range(5):
        scheduler.add(seq(f"small{n}", num_prompt=1, priority=7, arrival_s=n))
        step(scheduler)
        if "big" in ids(scheduler.running):
            break
        assert not any(s.seq_id.startswith("small") for s in scheduler.running)
    assert "big" in ids(scheduler.running)


def test_a_preempted_sequence_is_recomputed_and_finishes() -> None:
    scheduler = make(num_blocks=3, block_size=2, max_batch_tokens=8)
    scheduler.add(seq("high", num_prompt=2, priority=1, max_tokens=3))
    scheduler.add(seq("low", num_prompt=2, priority=5, max_tokens=3))
    finished: list[Sequence] = []
    for _ in range(20):
        _, done = step(scheduler)
        finished += done
        if not scheduler.has_work:
            break
    assert ids(finished) == ["high", "low"]
    assert all(s.num_output_tokens == 3 for s in finished)
    assert scheduler.blocks.num_free_blocks == 3


def test_cancelling_frees_blocks_at_once_wherever_the_sequence_is() -> None:
    scheduler = make(num_blocks=8, max_num_seqs=1)
    scheduler.add(seq("running", num_prompt=8))
    scheduler.add(seq("waiting"))
    step(scheduler)
    assert scheduler.blocks.num_free_blocks == 6
    cancelled = scheduler.cancel("running")
    assert cancelled.state is SequenceState.CANCELLED
    assert cancelled.finish_reason is FinishReason.CANCELLED
    assert scheduler.blocks.num_free_blocks == 8 and cancelled.block_table == []
    scheduler.cancel("waiting")
    assert not scheduler.has_work
    with pytest.raises(NotFoundError):
        scheduler.cancel("waiting")


def test_a_sequence_cancelled_mid_step_is_skipped_by_postprocess() -> None:
    scheduler = make()
    scheduler.add(seq("a"))
    scheduler.add(seq("b"))
    batch = scheduler.schedule()
    scheduler.cancel("a")
    finished = scheduler.postprocess(batch, [7, 7])
    assert finished == [] and ids(scheduler.running) == ["b"]
    assert scheduler.blocks.num_used_blocks == 1


def test_prefills_are_grouped_by_power_of_two_length() -> None:
    scheduler = make(max_batch_tokens=64)
    for name, length in [("a", 3), ("b", 16), ("c", 4), ("d", 9), ("e", 12)]:
        scheduler.add(seq(name, num_prompt=length))
    groups = scheduler.schedule().prefill_groups()
    assert [[row.seq.seq_id for row in group] for group in groups] == [
        ["b", "e", "d"],
        ["c", "a"],
    ]


def test_impossible_or_duplicate_sequences_are_refused() -> None:
    scheduler = make(num_blocks=2, block_size=4)
    with pytest.raises(InvalidRequestError):
        scheduler.add(seq("huge", num_prompt=4, max_tokens=8))
    scheduler.add(seq("a", max_tokens=2))
    with pytest.raises(InvalidRequestError):
        scheduler.add(seq("a", max_tokens=2))


def test_postprocess_checks_the_token_count() -> None:
    scheduler = make()
    scheduler.add(seq("a"))
    batch = scheduler.schedule()
    with pytest.raises(ValueError):
        scheduler.postprocess(batch, [])
    with pytest.raises(ValueError):
        scheduler.postprocess(batch, [None])
