"""The model runner: the only place a step touches torch (inputs, forward pass, sampling).

``execute(batch)`` returns one entry per ``batch.rows`` row: the sampled token id where the row
computes its sequence's last uncached token, ``None`` for a prefill chunk that does not finish the
prompt. Memory is bounded up front: the KV cache is allocated once, ``num_blocks * block_size``
token slots, and never grows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from openautoglm.engine.model.forward import (
    KVCache,
    ModelShape,
    PagedDecoder,
    check_supported,
    model_dtype,
)
from openautoglm.engine.model.inputs import StepInputs, prepare_inputs
from openautoglm.engine.model.parallel import (
    Collective,
    build_sharded_decoder,
    start_workers,
    stop_workers,
)
from openautoglm.engine.model.sampler import Sampler
from openautoglm.engine.scheduler import Batch


class ModelRunner:
    """Runs scheduled batches through a loaded transformers causal LM."""

    def __init__(
        self,
        model: Any,
        *,
        num_blocks: int,
        block_size: int,
        decoder: PagedDecoder | None = None,
        num_threads: int | None = None,
    ) -> None:
        check_supported(model.config)
        # torch's intra-op thread count is per calling thread: applied in the engine's thread.
        self._num_threads = num_threads
        self.model = model
        self.device = torch.device(model.device)
        self.block_size = block_size
        if decoder is None:
            shape = ModelShape.of(model.config)
            cache = KVCache.allocate(
                shape.num_layers,
                num_blocks * block_size,
                shape.num_kv_heads,
                shape.head_dim,
                model_dtype(model),
                self.device,
            )
            decoder = PagedDecoder(model, shape, cache)
        self.decoder = decoder
        self.sampler = Sampler(self.device)

    @property
    def kv_cache_bytes(self) -> int:
        return self.decoder.cache.num_bytes

    def execute(self, batch: Batch) -> list[int | None]:
        rows = batch.rows
        if not rows:
            return []
        self.apply_threads()
        inputs = prepare_inputs(batch, self.block_size, self.device)
        logits = self._forward(inputs)
        sampling = [row.seq for row in rows if row.samples]
        tokens = iter(self.sampler.sample(logits, sampling))
        return [next(tokens) if row.samples else None for row in rows]

    def apply_threads(self) -> None:
        """Set torch's thread count for the calling thread (once)."""
        if self._num_threads is not None:
            torch.set_num_threads(self._num_threads)
            self._num_threads = None

    def _forward(self, inputs: StepInputs) -> torch.Tensor:
        return self.decoder.logits(inputs)

    def forget(self, seq_id: str) -> None:
        """Drop per-sequence state (its sampling generator) once it has finished."""
        self.sampler.forget(seq_id)

    def close(self) -> None:
        """Release what the runner started (nothing, on one process)."""


class TensorParallelRunner(ModelRunner):
    """Rank 0 of a tensor-parallel group: broadcasts each step, runs its shard, samples.

    ``load`` must be a picklable top-level callable that loads the same model (with the same
    precision) in a worker process.
    """

    def __init__(
        self,
        model: Any,
        load: Callable[[], Any],
        *,
        world_size: int,
        num_blocks: int,
        block_size: int,
        num_threads: int,
    ) -> None:
        check_supported(model.config)
        collective, workers = start_workers(world_size, load, num_blocks, block_size, num_threads)
        self.collective: Collective = collective
        self.workers = workers
        decoder = build_sharded_decoder(model, collective, num_blocks, block_size)
        super().__init__(
            model,
            num_blocks=num_blocks,
            block_size=block_size,
            decoder=decoder,
            num_threads=num_threads,
        )

    def _forward(self, inputs: StepInputs) -> torch.Tensor:
        self.collective.broadcast_step(inputs)
        return self.decoder.logits(inputs)

    def close(self) -> None:
        """Tell the other ranks to stop and wait for them."""
        stop_workers(self.collective, self.workers)
