"""Paged KV-cache bookkeeping: which fixed-size blocks of the cache each sequence owns.

The cache is ``num_blocks`` blocks of ``block_size`` token slots, a hard memory bound. A sequence's
``block_table`` lists its blocks in token order; token ``i`` lives in block ``block_table[i //
block_size]``. No tensors here: the runner owns the memory, this module owns who may use what.

Invariants: a block is free exactly when its reference count is zero; a block with reference count
one belongs to one sequence only; ``num_free_blocks + num_used_blocks == num_blocks`` always.

Prefix caching (optional): a *full* block whose KV has been computed is registered under a hash of
its tokens chained with the previous block's hash, so the hash names the whole prefix. A later
sequence with the same prefix shares the block (reference count + 1) and skips computing it. A
freed block keeps its hash until it is handed out again, least recently freed first, so recently
used prefixes survive longest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openautoglm.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    prefix_hash: int | None = None
    token_ids: tuple[int, ...] = field(default=())


def chain_hash(previous: int | None, token_ids: tuple[int, ...]) -> int:
    """The hash of a prefix ending in these tokens; deterministic (int tuples are not salted)."""
    return hash((previous, token_ids))


class BlockManager:
    """Hands out and takes back KV-cache blocks for sequences."""

    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = False) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # An insertion-ordered dict as an ordered set: the first key is the least recently freed.
        self._free: dict[int, None] = dict.fromkeys(range(num_blocks))
        self._by_hash: dict[int, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether ``seq`` fits now; counts every block as new, so cache hits only add headroom."""
        return self.blocks_needed(seq.num_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` blocks for all its tokens, reusing cached prefix blocks when enabled."""
        if seq.block_table:
            raise ValueError(f"sequence {seq.seq_id!r} already holds blocks")
        if not self.can_allocate(seq):
            raise MemoryError(f"no room in the KV cache for sequence {seq.seq_id!r}")
        previous: int | None = None
        hitting = self.prefix_caching
        for index in range(self.blocks_needed(seq.num_tokens)):
            start = index * self.block_size
            tokens = tuple(seq.token_ids[start : start + self.block_size])
            # At least one token must stay uncached, so the model has a position to sample from.
            if hitting and start + self.block_size < seq.num_tokens:
                previous = chain_hash(previous, tokens)
                block_id = self._lookup(previous, tokens)
                if block_id is not None:
                    self._take(block_id)
                    seq.block_table.append(block_id)
                    seq.num_cached_tokens = start + self.block_size
                    continue
            hitting = False
            seq.block_table.append(self._take_fresh())

    def can_append(self, seq: Sequence) -> bool:
        """Whether the blocks for ``seq``'s current tokens (one more slot, in decode) can be had."""
        missing = self.blocks_needed(seq.num_tokens) - len(seq.block_table)
        return missing <= self.num_free_blocks

    def may_append(self, seq: Sequence) -> None:
        """Add a block when the last one is full and ``seq`` has a token without a slot."""
        if not self.can_append(seq):
            raise MemoryError(f"no room in the KV cache to extend sequence {seq.seq_id!r}")
        while len(seq.block_table) < self.blocks_needed(seq.num_tokens):
            seq.block_table.append(self._take_fresh())

    def commit(self, seq: Sequence) -> None:
        """Register the full, computed blocks of ``seq`` for prefix sharing (when enabled)."""
        if not self.prefix_caching:
            return
        previous: int | None = None
        for index in range(seq.num_cached_tokens // self.block_size):
            block = self.blocks[seq.block_table[index]]
            if block.prefix_hash is None:
                start = index * self.block_size
                block.token_ids = tuple(seq.token_ids[start : start + self.block_size])
                block.prefix_hash = chain_hash(previous, block.token_ids)
                self._by_hash.setdefault(block.prefix_hash, block.block_id)
            previous = block.prefix_hash

    def free(self, seq: Sequence) -> None:
        """Give back every block of ``seq`` at once (finish, cancel, preempt); forget its cache."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.reset_for_recompute()

    def _lookup(self, prefix_hash: int, tokens: tuple[int, ...]) -> int | None:
        block_id = self._by_hash.get(prefix_hash)
        if block_id is None:
            return None
        block = self.blocks[block_id]
        return block_id if block.prefix_hash == prefix_hash and block.token_ids == tokens else None

    def _take(self, block_id: int) -> None:
        self._free.pop(block_id, None)
        self.blocks[block_id].ref_count += 1

    def _take_fresh(self) -> int:
        block_id = next(iter(self._free))
        block = self.blocks[block_id]
        if block.prefix_hash is not None and self._by_hash.get(block.prefix_hash) == block_id:
            del self._by_hash[block.prefix_hash]
        block.prefix_hash = None
        block.token_ids = ()
        self._take(block_id)
        return block_id
