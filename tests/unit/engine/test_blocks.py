"""Paged KV-cache bookkeeping: allocation, growth, freeing and prefix sharing."""

from __future__ import annotations

import random

import pytest

from openautoglm.engine.blocks import BlockManager
from openautoglm.engine.sequence import Sequence, SequenceState


def running(seq_id: str, tokens: list[int]) -> Sequence:
    seq = Sequence(seq_id, tokens)
    seq.transition(SequenceState.RUNNING)
    return seq


def test_allocation_takes_ceil_of_tokens_over_block_size() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    seq = Sequence("a", list(range(9)))
    assert blocks.can_allocate(seq)
    blocks.allocate(seq)
    assert len(seq.block_table) == 3
    assert (blocks.num_free_blocks, blocks.num_used_blocks) == (5, 3)


def test_a_sequence_that_does_not_fit_is_refused() -> None:
    blocks = BlockManager(num_blocks=2, block_size=4)
    seq = Sequence("a", list(range(9)))
    assert not blocks.can_allocate(seq)
    with pytest.raises(MemoryError):
        blocks.allocate(seq)
    assert blocks.num_free_blocks == 2 and seq.block_table == []


def test_a_new_block_is_added_only_when_the_last_is_full() -> None:
    blocks = BlockManager(num_blocks=3, block_size=2)
    seq = running("a", [1, 2])
    blocks.allocate(seq)
    seq.mark_cached(2)
    seq.append_token(3)  # token 3 has no slot yet
    assert blocks.can_append(seq)
    blocks.may_append(seq)
    assert len(seq.block_table) == 2
    seq.mark_cached(1)
    seq.append_token(4)  # fits in the second block
    blocks.may_append(seq)
    assert len(seq.block_table) == 2 and blocks.num_free_blocks == 1


def test_appending_past_memory_is_refused() -> None:
    blocks = BlockManager(num_blocks=1, block_size=2)
    seq = running("a", [1, 2])
    blocks.allocate(seq)
    seq.append_token(3)
    assert not blocks.can_append(seq)
    with pytest.raises(MemoryError):
        blocks.may_append(seq)


def test_freeing_returns_every_block_and_forgets_the_cache() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2)
    seq = running("a", [1, 2, 3])
    blocks.allocate(seq)
    seq.mark_cached(3)
    blocks.free(seq)
    assert blocks.num_free_blocks == 4
    assert seq.block_table == [] and seq.num_cached_tokens == 0


def test_blocks_are_never_double_allocated_under_random_churn() -> None:
    rng = random.Random(7)
    blocks = BlockManager(num_blocks=32, block_size=4)
    live: list[Sequence] = []
    for step in range(500):
        if live and rng.random() < 0.4:
            blocks.free(live.pop(rng.randrange(len(live))))
        else:
            seq = Sequence(f"s{step}", [1] * rng.randint(1, 20))
            if blocks.can_allocate(seq):
                blocks.allocate(seq)
                live.append(seq)
        owned = [block for seq in live for block in seq.block_table]
        assert len(owned) == len(set(owned))
        assert blocks.num_used_blocks == len(owned)
        assert blocks.num_free_blocks == 32 - len(owned)


def test_a_shared_prefix_reuses_computed_full_blocks() -> None:
    blocks = BlockManager(num_blocks=8, block_size=2, prefix_caching=True)
    first = running("a", [1, 2, 3, 4, 5])
    blocks.allocate(first)
    first.mark_cached(5)
    blocks.commit(first)
    second = Sequence("b", [1, 2, 3, 4, 9])
    blocks.allocate(second)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] != first.block_table[2]
    assert second.num_cached_tokens == 4
    assert blocks.num_used_blocks == 4
    blocks.free(first)
    assert blocks.num_used_blocks == 3  # the shared blocks stay while the second holds them
    blocks.free(second)
    assert blocks.num_free_blocks == 8


def test_a_prefix_hit_always_leaves_one_token_to_compute() -> None:
    blocks = BlockManager(num_blocks=8, block_size=2, prefix_caching=True)
    first = running("a", [1, 2, 3, 4])
    blocks.allocate(first)
    first.mark_cached(4)
    blocks.commit(first)
    twin = Sequence("b", [1, 2, 3, 4])
    blocks.allocate(twin)
    assert twin.num_cached_tokens == 2 and twin.num_uncached_tokens == 2


def test_a_freed_cached_block_is_reused_until_handed_out_again() -> None:
    blocks = BlockManager(num_blocks=2, block_size=2, prefix_caching=True)
    first = running("a", [1, 2, 3])
    blocks.allocate(first)
    first.mark_cached(3)
    blocks.commit(first)
    blocks.free(first)
    again = Sequence("b", [1, 2, 5])
    blocks.allocate(again)
    assert again.num_cached_tokens == 2
    blocks.free(again)
    other = Sequence("c", [7, 8, 9, 10])
    blocks.allocate(other)  # evicts both blocks
    blocks.free(other)
    late = Sequence("d", [1, 2, 5])
    blocks.allocate(late)
    assert late.num_cached_tokens == 0


def test_uncomputed_blocks_are_not_shared() -> None:
    blocks = BlockManager(num_blocks=8, block_size=2, prefix_caching=True)
    first = running("a", [1, 2, 3, 4, 5])
    blocks.allocate(first)
    first.mark_cached(2)
    blocks.commit(first)
    second = Sequence("b", [1, 2, 3, 4, 5])
    blocks.allocate(second)
    assert second.num_cached_tokens == 2  # only the computed first block is shared
    assert second.block_table[0] == first.block_table[0]
    assert second.block_table[1] != first.block_table[1]
