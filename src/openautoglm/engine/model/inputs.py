"""One step's batch turned into flat tensors the paged forward pass consumes.

Layout: every row's new tokens are packed into one flat run of ``T`` tokens (no padding in the
linear layers). Attention is computed per *group* of rows padded to the group's longest query and
key run; the scheduler's length buckets keep that padding under 2x. Decode rows form one group.

Invariants: ``slot_mapping[i]`` is the KV-cache slot the i-th packed token's key/value go to, and
it lies inside the row's own blocks; a group's ``kv_slots`` list, per row, the slots of every token
up to and including its last new one, in position order; ``sample_index`` holds, in ``batch.rows``
order, the packed index of each row that samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openautoglm.engine.scheduler import Batch, ScheduledSeq


@dataclass(frozen=True, slots=True)
class AttentionGroup:
    """Rows that share one padded attention call."""

    query_index: torch.Tensor  # [B, max_q] packed indices (padding: 0)
    query_valid: torch.Tensor  # [B, max_q] bool
    kv_slots: torch.Tensor  # [B, max_kv] cache slots (padding: 0)
    mask: torch.Tensor | None  # [B, 1, max_q, max_kv] bool, True = attend; None = plain causal
    causal_self: bool  # one row, nothing cached: attend over the packed run itself


@dataclass(frozen=True, slots=True)
class StepInputs:
    """Everything one forward pass needs; plain tensors, so it can be sent to other ranks."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T]
    groups: tuple[AttentionGroup, ...]
    sample_index: torch.Tensor  # [S]


def _slots(row: ScheduledSeq, block_size: int, start: int, stop: int) -> list[int]:
    table = row.seq.block_table
    return [table[p // block_size] * block_size + p % block_size for p in range(start, stop)]


def _group(
    rows: list[ScheduledSeq], offsets: list[int], block_size: int, device: torch.device
) -> AttentionGroup:
    first = rows[0]
    if len(rows) == 1 and first.seq.num_cached_tokens == 0:
        n = first.num_new_tokens
        index = torch.arange(offsets[0], offsets[0] + n, device=device).unsqueeze(0)
        valid = torch.ones((1, n), dtype=torch.bool, device=device)
        empty = torch.empty((1, 0), dtype=torch.long, device=device)
        return AttentionGroup(index, valid, empty, None, causal_self=True)
    max_q = max(row.num_new_tokens for row in rows)
    kv_lengths = [row.seq.num_cached_tokens + row.num_new_tokens for row in rows]
    max_kv = max(kv_lengths)
    query_index = torch.zeros((len(rows), max_q), dtype=torch.long)
    kv_slots = torch.zeros((len(rows), max_kv), dtype=torch.long)
    mask = torch.zeros((len(rows), 1, max_q, max_kv), dtype=torch.bool)
    for b, (row, offset, kv_len) in enumerate(zip(rows, offsets, kv_lengths, strict=True)):
        n, cached = row.num_new_tokens, row.seq.num_cached_tokens
        query_index[b, :n] = torch.arange(offset, offset + n)
        kv_slots[b, :kv_len] = torch.tensor(_slots(row, block_size, 0, kv_len))
        # Query i sits at position cached + i and sees every key up to it.
        mask[b, 0, :n, :kv_len] = torch.ones((n, kv_len), dtype=torch.bool).tril(cached)
        mask[b, 0, n:, 0] = True  # padding queries attend somewhere, so no row is all -inf
    valid = torch.arange(max_q).unsqueeze(0) < torch.tensor(
        [row.num_new_tokens for row in rows]
    ).unsqueeze(1)
    return AttentionGroup(
        query_index.to(device), valid.to(device), kv_slots.to(device), mask.to(device), False
    )


def prepare_inputs(batch: Batch, block_size: int, device: torch.device) -> StepInputs:
    """Pack a scheduled batch (decodes first, then prefill chunks) into :class:`StepInputs`."""
    input_ids: list[int] = []
    positions: list[int] = []
    slot_mapping: list[int] = []
    offsets: dict[int, int] = {}
    sample_index: list[int] = []
    for row in batch.rows:
        seq, start = row.seq, row.seq.num_cached_tokens
        stop = start + row.num_new_tokens
        offsets[id(row)] = len(input_ids)
        input_ids.extend(seq.token_ids[start:stop])
        positions.extend(range(start, stop))
        slot_mapping.extend(_slots(row, block_size, start, stop))
        if row.samples:
            sample_index.append(len(input_ids) - 1)
    groups: list[AttentionGroup] = []
    if batch.decodes:
        offs = [offsets[id(row)] for row in batch.decodes]
        groups.append(_group(batch.decodes, offs, block_size, device))
    for rows in batch.prefill_groups():
        if len(rows) > 1 and any(row.seq.num_cached_tokens == 0 for row in rows):
            rows_alone = [r for r in rows if r.seq.num_cached_tokens == 0]
            rows = [r for r in rows if r.seq.num_cached_tokens > 0]
            groups.extend(_group([r], [offsets[id(r)]], block_size, device) for r in rows_alone)
            if not rows:
                continue
        groups.append(_group(rows, [offsets[id(r)] for r in rows], block_size, device))

    def tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return StepInputs(
        tensor(input_ids),
        tensor(positions),
        tensor(slot_mapping),
        tuple(groups),
        tensor(sample_index),
    )
