"""A sequence's tokens, sampling parameters and state machine."""

from __future__ import annotations

import pytest

from openautoglm.core.errors import InvalidRequestError
from openautoglm.engine.sequence import (
    FinishReason,
    IllegalTransitionError,
    SamplingParams,
    Sequence,
    SequenceState,
)


def test_a_new_sequence_waits_with_its_prompt_and_nothing_cached() -> None:
    seq = Sequence("s", [1, 2, 3], priority=2, deadline=5.0, arrival_s=1.0)
    assert seq.state is SequenceState.WAITING
    assert (seq.num_tokens, seq.num_prompt_tokens, seq.num_output_tokens) == (3, 3, 0)
    assert (seq.num_cached_tokens, seq.num_uncached_tokens) == (0, 3)
    assert seq.prompt_token_ids == [1, 2, 3] and seq.output_token_ids == []
    assert not seq.is_decoding and not seq.is_finished


def test_the_lifecycle_follows_the_table_and_refuses_the_rest() -> None:
    seq = Sequence("s", [1])
    with pytest.raises(IllegalTransitionError):
        seq.transition(SequenceState.FINISHED)
    seq.transition(SequenceState.RUNNING)
    seq.transition(SequenceState.PREEMPTED)
    with pytest.raises(IllegalTransitionError):
        seq.transition(SequenceState.RUNNING)  # a preempted sequence queues again first
    seq.transition(SequenceState.WAITING)
    seq.transition(SequenceState.RUNNING)
    seq.finish(FinishReason.LENGTH)
    assert seq.state is SequenceState.FINISHED and seq.finish_reason is FinishReason.LENGTH
    for state in SequenceState:
        with pytest.raises(IllegalTransitionError):
            seq.transition(state)


@pytest.mark.parametrize("state", [SequenceState.WAITING, SequenceState.RUNNING])
def test_waiting_and_running_sequences_can_be_cancelled(state: SequenceState) -> None:
    seq = Sequence("s", [1])
    if state is SequenceState.RUNNING:
        seq.transition(state)
    seq.finish(FinishReason.CANCELLED)
    assert seq.state is SequenceState.CANCELLED and seq.is_finished


def test_a_stop_token_finishes_before_the_length_limit() -> None:
    seq = Sequence("s", [1, 2], SamplingParams(max_tokens=3, stop_token_ids=frozenset({9})))
    seq.transition(SequenceState.RUNNING)
    assert seq.append_token(5) is None
    assert seq.append_token(9) is FinishReason.STOP
    assert seq.output_token_ids == [5, 9]


def test_max_tokens_finishes_with_length() -> None:
    seq = Sequence("s", [1], SamplingParams(max_tokens=2))
    seq.transition(SequenceState.RUNNING)
    assert seq.append_token(4) is None
    assert seq.append_token(4) is FinishReason.LENGTH


def test_only_a_running_sequence_takes_tokens() -> None:
    with pytest.raises(IllegalTransitionError):
        Sequence("s", [1]).append_token(3)


def test_cached_tokens_never_pass_the_token_count() -> None:
    seq = Sequence("s", [1, 2, 3])
    seq.mark_cached(2)
    with pytest.raises(ValueError):
        seq.mark_cached(2)
    seq.mark_cached(1)
    assert seq.num_uncached_tokens == 0


def test_decoding_means_only_the_last_sampled_token_is_uncached() -> None:
    seq = Sequence("s", [1, 2])
    seq.transition(SequenceState.RUNNING)
    seq.mark_cached(2)
    seq.append_token(7)
    assert seq.is_decoding
    seq.reset_for_recompute()
    assert not seq.is_decoding and seq.num_uncached_tokens == 3


def test_order_key_is_priority_then_deadline_then_arrival() -> None:
    seqs = [
        Sequence("late-arrival", [1], priority=1, arrival_s=2.0),
        Sequence("no-deadline", [1], priority=1, arrival_s=0.0),
        Sequence("deadline", [1], priority=1, deadline=9.0, arrival_s=3.0),
        Sequence("urgent", [1], priority=0, arrival_s=5.0),
    ]
    ordered = sorted(seqs, key=lambda s: s.order_key)
    assert [s.seq_id for s in ordered] == ["urgent", "deadline", "no-deadline", "late-arrival"]


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"max_tokens": 0}],
)
def test_bad_sampling_params_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", [-1, 10, True])
def test_bad_priorities_and_empty_prompts_are_refused(priority: int) -> None:
    with pytest.raises(InvalidRequestError):
        Sequence("s", [1], priority=priority)
    with pytest.raises(InvalidRequestError):
        Sequence("s", [])
