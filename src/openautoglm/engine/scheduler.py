"""The engine's step scheduler: which sequences run in the next forward pass, and how many tokens.

Each :meth:`EngineScheduler.schedule` returns a :class:`Batch`, built in three passes:

1. *Decode* every running sequence that has finished its prefill (one token each). When the KV
   cache has no slot for one, the worst running sequence (lowest priority, then latest deadline,
   then latest arrival) is preempted: its blocks are freed and it goes back to waiting, to be
   recomputed later. The sequence being served is never preempted for a worse one.
2. *Continue* chunked prefills of running sequences, best first, under the step's token budget.
3. *Admit* waiting sequences in the gateway's order (priority, earliest deadline, arrival) while
   there is budget, a sequence slot and memory. Admission stops at the first sequence that does not
   fit (no overtaking, so a waiting high-priority sequence cannot starve); if it is strictly better
   than some running sequence, the worst such one is preempted to make room.

Padding: admission order never depends on length. Within a step, the batch lists its prefill
chunks longest first, and :meth:`Batch.prefill_groups` splits them into power-of-two length buckets,
so a padded runner pads each chunk to at most twice its length (a varlen runner ignores the
grouping). Chunking also caps every prefill at the budget, which bounds the longest row.

Invariants: ``max_batch_tokens >= max_num_seqs`` so decodes always fit; a step's tokens never exceed
``max_batch_tokens`` and its sequences never exceed ``max_num_seqs``; every running sequence holds
blocks for all its tokens; a finished, cancelled or preempted sequence holds none.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from openautoglm.core.errors import InvalidRequestError, NotFoundError
from openautoglm.engine.blocks import BlockManager
from openautoglm.engine.sequence import FinishReason, Sequence, SequenceState


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    """One row of a batch: compute ``num_new_tokens`` tokens of ``seq`` from its cached prefix."""

    seq: Sequence
    num_new_tokens: int
    is_prefill: bool

    @property
    def samples(self) -> bool:
        """Whether this row yields a token: it computes the sequence's last uncached token."""
        return self.num_new_tokens == self.seq.num_uncached_tokens


@dataclass(slots=True)
class Batch:
    """What the runner computes in one step: decode rows first, then prefill chunks."""

    decodes: list[ScheduledSeq] = field(default_factory=list)
    prefills: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def rows(self) -> list[ScheduledSeq]:
        return self.decodes + self.prefills

    @property
    def num_tokens(self) -> int:
        return sum(row.num_new_tokens for row in self.rows)

    @property
    def is_empty(self) -> bool:
        return not self.decodes and not self.prefills

    def prefill_groups(self) -> list[list[ScheduledSeq]]:
        """Prefill chunks grouped by power-of-two length bucket, longest bucket first."""
        groups: dict[int, list[ScheduledSeq]] = {}
        for row in self.prefills:
            groups.setdefault((row.num_new_tokens - 1).bit_length(), []).append(row)
        return [groups[bucket] for bucket in sorted(groups, reverse=True)]


class EngineScheduler:
    """Continuous batching over a :class:`BlockManager`; deterministic, no clock of its own."""

    def __init__(self, blocks: BlockManager, *, max_num_seqs: int, max_batch_tokens: int) -> None:
        if max_num_seqs < 1 or max_batch_tokens < max_num_seqs:
            raise ValueError("need max_num_seqs >= 1 and max_batch_tokens >= max_num_seqs")
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_batch_tokens = max_batch_tokens
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self.running + self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; refuse one that could never fit in the whole cache."""
        if seq.state is not SequenceState.WAITING:
            raise InvalidRequestError(f"sequence {seq.seq_id!r} is {seq.state.value}, not waiting")
        most_tokens = seq.num_prompt_tokens + seq.params.max_tokens
        if self.blocks.blocks_needed(most_tokens) > self.blocks.num_blocks:
            raise InvalidRequestError(
                f"sequence {seq.seq_id!r} needs up to {most_tokens} tokens of KV cache; "
                f"the engine holds {self.blocks.num_blocks * self.blocks.block_size}"
            )
        if any(other.seq_id == seq.seq_id for other in self):
            raise InvalidRequestError(f"sequence {seq.seq_id!r} is already scheduled")
        self.waiting.append(seq)

    def cancel(self, seq_id: str) -> Sequence:
        """Cancel a waiting or running sequence and free its memory at once."""
        for queue in (self.running, self.waiting):
            for seq in queue:
                if seq.seq_id == seq_id:
                    queue.remove(seq)
                    self.blocks.free(seq)
                    seq.finish(FinishReason.CANCELLED)
                    return seq
        raise NotFoundError(f"no scheduled sequence {seq_id!r}")

    def schedule(self) -> Batch:
        batch = Batch()
        self.running.sort(key=lambda s: s.order_key)
        self.waiting.sort(key=lambda s: s.order_key)
        budget = self.max_batch_tokens - self._schedule_decodes(batch)
        for seq in self.running:
            if budget == 0:
                break
            if not seq.is_decoding:
                chunk = min(seq.num_uncached_tokens, budget)
                batch.prefills.append(ScheduledSeq(seq, chunk, is_prefill=True))
                budget -= chunk
        self._admit(batch, budget)
        batch.prefills.sort(key=lambda row: -row.num_new_tokens)
        return batch

    def postprocess(self, batch: Batch, token_ids: Seq[int | None]) -> list[Sequence]:
        """Record a step's results; ``token_ids`` aligns with ``batch.rows`` (None: no sample).

        Returns the sequences that finished in this step; their blocks are already free.
        """
        rows = batch.rows
        if len(token_ids) != len(rows):
            raise ValueError(f"{len(token_ids)} tokens for a batch of {len(rows)} rows")
        finished: list[Sequence] = []
        for row, token_id in zip(rows, token_ids, strict=True):
            seq = row.seq
            if seq.state is not SequenceState.RUNNING:
                continue  # cancelled between schedule and postprocess; its blocks are gone
            samples = row.samples
            seq.mark_cached(row.num_new_tokens)
            self.blocks.commit(seq)
            if not samples:
                continue
            if token_id is None:
                raise ValueError(f"row for {seq.seq_id!r} completes its tokens but got no sample")
            reason = seq.append_token(token_id)
            if reason is not None:
                self.running.remove(seq)
                self.blocks.free(seq)
                seq.finish(reason)
                finished.append(seq)
        return finished

    def _schedule_decodes(self, batch: Batch) -> int:
        """Decode running sequences best first, preempting the worst on memory; return tokens."""
        num_tokens = 0
        index = 0
        while index < len(self.running):
            seq = self.running[index]
            if not seq.is_decoding:
                index += 1
                continue
            while not self.blocks.can_append(seq):
                victim = self.running[-1]  # sorted best first: the worst is last, maybe seq itself
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                self.blocks.may_append(seq)
                batch.decodes.append(ScheduledSeq(seq, 1, is_prefill=False))
                num_tokens += 1
                index += 1
        return num_tokens

    def _admit(self, batch: Batch, budget: int) -> None:
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            if len(self.running) >= self.max_num_seqs and not self._make_room(seq, batch):
                return
            while not self.blocks.can_allocate(seq):
                if not self._make_room(seq, batch):
                    return
            self.waiting.pop(0)
            self.blocks.allocate(seq)
            seq.transition(SequenceState.RUNNING)
            self.running.append(seq)
            chunk = min(seq.num_uncached_tokens, budget)
            batch.prefills.append(ScheduledSeq(seq, chunk, is_prefill=True))
            budget -= chunk

    def _make_room(self, seq: Sequence, batch: Batch) -> bool:
        """Preempt the worst running sequence if ``seq`` strictly outranks it on priority.

        The victim's rows leave the batch; their tokens are not given back to this step's budget.
        """
        if not self.running:
            return False
        victim = max(self.running, key=lambda s: s.order_key)
        if victim.priority <= seq.priority:
            return False
        self._preempt(victim, batch)
        return True

    def _preempt(self, victim: Sequence, batch: Batch) -> None:
        self.running.remove(victim)
        batch.decodes = [row for row in batch.decodes if row.seq is not victim]
        batch.prefills = [row for row in batch.prefills if row.seq is not victim]
        self.blocks.free(victim)
        victim.transition(SequenceState.PREEMPTED)
        victim.transition(SequenceState.WAITING)
        self.waiting.insert(0, victim)
        self.waiting.sort(key=lambda s: s.order_key)
        batch.preempted.append(victim)
