"""One generation request inside the engine: its tokens, sampling parameters and lifecycle.

Invariants: a :class:`Sequence` moves only along ``SEQUENCE_TRANSITIONS`` (anything else raises
:class:`IllegalTransitionError`); ``0 <= num_cached_tokens <= num_tokens``; a sequence holds KV
blocks (a non-empty ``block_table``) only while it is ``RUNNING``. Preemption is by recompute: a
preempted sequence keeps its output tokens, forgets its cache, and prefills prompt + output again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from openautoglm.core.errors import ConflictError, InvalidRequestError

HIGHEST_PRIORITY = 0
LOWEST_PRIORITY = 9


class SequenceState(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class FinishReason(Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


SEQUENCE_TRANSITIONS: dict[SequenceState, frozenset[SequenceState]] = {
    SequenceState.WAITING: frozenset({SequenceState.RUNNING, SequenceState.CANCELLED}),
    SequenceState.RUNNING: frozenset(
        {SequenceState.FINISHED, SequenceState.PREEMPTED, SequenceState.CANCELLED}
    ),
    SequenceState.PREEMPTED: frozenset({SequenceState.WAITING, SequenceState.CANCELLED}),
    SequenceState.FINISHED: frozenset(),
    SequenceState.CANCELLED: frozenset(),
}


class IllegalTransitionError(ConflictError):
    """A sequence was asked to move to a state its current state does not lead to."""

    code = "illegal_sequence_transition"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token; ``top_k = 0`` means no top-k cut."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int = 256
    stop_token_ids: frozenset[int] = frozenset()
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InvalidRequestError("temperature must be >= 0", param="temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError("top_p must be in (0, 1]", param="top_p")
        if self.top_k < 0:
            raise InvalidRequestError("top_k must be >= 0", param="top_k")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise InvalidRequestError("repetition_penalty must be > 0", param="repetition_penalty")
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be >= 1", param="max_tokens")


class Sequence:
    """A prompt and the tokens generated for it so far.

    ``num_cached_tokens`` counts the leading tokens whose KV is in the cache: the prefill progress
    under chunked prefill. A sequence samples a new token once every token is cached.
    """

    def __init__(
        self,
        seq_id: str,
        prompt_token_ids: Iterable[int],
        params: SamplingParams | None = None,
        *,
        priority: int = 4,
        deadline: float | None = None,
        arrival_s: float = 0.0,
    ) -> None:
        prompt = list(prompt_token_ids)
        if not prompt:
            raise InvalidRequestError("the prompt must have at least one token", param="prompt")
        if isinstance(priority, bool) or not HIGHEST_PRIORITY <= priority <= LOWEST_PRIORITY:
            raise InvalidRequestError(
                f"priority must be {HIGHEST_PRIORITY}..{LOWEST_PRIORITY}", param="priority"
            )
        self.seq_id = seq_id
        self.params = params if params is not None else SamplingParams()
        self.priority = priority
        self.deadline = deadline
        self.arrival_s = arrival_s
        self.token_ids: list[int] = prompt
        self.num_prompt_tokens = len(prompt)
        self.num_cached_tokens = 0
        self.block_table: list[int] = []
        self.state = SequenceState.WAITING
        self.finish_reason: FinishReason | None = None

    def __repr__(self) -> str:
        return (
            f"Sequence({self.seq_id!r}, {self.state.value}, priority={self.priority}, "
            f"tokens={self.num_tokens}, cached={self.num_cached_tokens})"
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncached_tokens(self) -> int:
        return self.num_tokens - self.num_cached_tokens

    @property
    def is_decoding(self) -> bool:
        """Only the last sampled token is left to compute: one token per step from now on."""
        return self.num_output_tokens > 0 and self.num_uncached_tokens == 1

    @property
    def is_finished(self) -> bool:
        return self.state in (SequenceState.FINISHED, SequenceState.CANCELLED)

    @property
    def order_key(self) -> tuple[int, float, float, str]:
        """The gateway's order: priority, earliest deadline, arrival (then id, for ties)."""
        deadline = self.deadline if self.deadline is not None else math.inf
        return (self.priority, deadline, self.arrival_s, self.seq_id)

    def transition(self, to: SequenceState) -> None:
        if to not in SEQUENCE_TRANSITIONS[self.state]:
            raise IllegalTransitionError(
                f"sequence {self.seq_id!r} cannot go from {self.state.value} to {to.value}"
            )
        self.state = to

    def mark_cached(self, num_new_tokens: int) -> None:
        if not 0 <= num_new_tokens <= self.num_uncached_tokens:
            raise ValueError(
                f"cannot cache {num_new_tokens} tokens; {self.num_uncached_tokens} uncached"
            )
        self.num_cached_tokens += num_new_tokens

    def append_token(self, token_id: int) -> FinishReason | None:
        """Append a sampled token; return why the sequence should finish now, or None."""
        if self.state is not SequenceState.RUNNING:
            raise IllegalTransitionError(
                f"sequence {self.seq_id!r} is {self.state.value}; only running ones take tokens"
            )
        self.token_ids.append(token_id)
        if token_id in self.params.stop_token_ids:
            return FinishReason.STOP
        if self.num_output_tokens >= self.params.max_tokens:
            return FinishReason.LENGTH
        return None

    def finish(self, reason: FinishReason) -> None:
        self.transition(
            SequenceState.CANCELLED if reason is FinishReason.CANCELLED else SequenceState.FINISHED
        )
        self.finish_reason = reason

    def reset_for_recompute(self) -> None:
        """Forget the cache after preemption; the tokens stay and are prefilled again."""
        self.num_cached_tokens = 0
        self.block_table = []
