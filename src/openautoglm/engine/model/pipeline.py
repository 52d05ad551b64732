"""Pipeline parallelism: the decoder's layers split into stages across processes, each step's
batch cut into micro-batches so the stages work at the same time.

Rank 0 (in the serving process) holds the first stage and samples; rank ``N-1`` holds the last
stage (final norm and ``lm_head``). For each step rank 0 broadcasts the micro-batches' inputs, then
runs its layers on micro-batch 0, sends the hidden states on, and goes straight to micro-batch 1
while the next stage works on 0. The last stage sends each micro-batch's logits back to rank 0.

Invariants: micro-batches are contiguous slices of ``batch.rows``, so their logits, concatenated,
line up with the batch's sampling rows; every rank handles the micro-batches in the same order
with the same tags, so sends and receives always pair up; each rank keeps (and caches KV for)
only its own layers.
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
    WorkerSpec,
    join_group,
    start_workers,
    stop_workers,
)
from openautoglm.engine.model.runner import ModelRunner
from openautoglm.engine.scheduler import Batch


def stage_layers(num_layers: int, num_stages: int) -> list[range]:
    """Contiguous, near-equal layer ranges, one per stage (earlier stages take the extra)."""
    if not 1 <= num_stages <= num_layers:
        raise ValueError(f"pipeline_parallel_size {num_stages} must be 1..{num_layers} (layers)")
    base, extra = divmod(num_layers, num_stages)
    ranges, start = [], 0
    for stage in range(num_stages):
        size = base + (1 if stage < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def micro_batches(batch: Batch, parts: int) -> list[Batch]:
    """Cut ``batch`` into up to ``parts`` contiguous slices of its rows, balanced by tokens."""
    rows = batch.rows
    target = batch.num_tokens / max(1, min(parts, len(rows)))
    slices: list[Batch] = []
    current = Batch()
    tokens = 0
    for row in rows:
        (current.prefills if row.is_prefill else current.decodes).append(row)
        tokens += row.num_new_tokens
        if tokens >= target * (len(slices) + 1) and len(slices) < parts - 1:
            slices.append(current)
            current = Batch()
    if current.rows:
        slices.append(current)
    return slices


def stage_decoder(
    model: Any, stage: int, num_stages: int, num_blocks: int, block_size: int
) -> PagedDecoder:
    """Keep ``stage``'s layers of ``model`` (the others are dropped) with a KV cache for them."""
    check_supported(model.config)
    shape = ModelShape.of(model.config)
    layers = stage_layers(shape.num_layers, num_stages)[stage]
    for index in range(shape.num_layers):
        if index not in layers:
            model.model.layers[index] = torch.nn.Identity()
    dtype = model_dtype(model)
    cache = KVCache.allocate(
        len(layers),
        num_blocks * block_size,
        shape.num_kv_heads,
        shape.head_dim,
        dtype,
        torch.device(model.device),
    )
    return PagedDecoder(model, shape, cache, layers)


def _hidden_buffer(model: Any, inputs: StepInputs) -> torch.Tensor:
    return torch.empty((len(inputs.input_ids), model.config.hidden_size), dtype=model_dtype(model))


def pipeline_worker_main(spec: WorkerSpec) -> None:
    """A stage after the first: receive hidden states, run its layers, pass them on."""
    model, collective = join_group(spec)
    rank = spec.rank
    decoder = stage_decoder(model, rank, spec.world_size, spec.num_blocks, spec.block_size)
    to_rank = 0 if decoder.is_last_stage else rank + 1
    while (steps := collective.broadcast_step(None)) is not None:
        pending = []
        for tag, inputs in enumerate(steps):
            hidden = collective.receive(_hidden_buffer(model, inputs), rank - 1, tag)
            out = decoder.forward(inputs, hidden)
            if out.shape[0] > 0:
                pending.append(collective.send(out, to_rank, tag))
        for work in pending:
            work.wait()


class PipelineParallelRunner(ModelRunner):
    """Stage 0 of a pipeline: splits each step into micro-batches and samples the results."""

    def __init__(
        self,
        model: Any,
        load: Callable[[], Any],
        *,
        world_size: int,
        num_blocks: int,
        block_size: int,
        num_threads: int,
        num_micro_batches: int = 2,
    ) -> None:
        collective, workers = start_workers(
            world_size, load, num_blocks, block_size, num_threads, target=pipeline_worker_main
        )
        self.collective: Collective = collective
        self.workers = workers
        self.num_micro_batches = num_micro_batches
        self.vocab_size = int(model.lm_head.out_features)
        decoder = stage_decoder(model, 0, world_size, num_blocks, block_size)
        super().__init__(
            model,
            num_blocks=num_blocks,
            block_size=block_size,
            decoder=decoder,
            num_threads=num_threads,
        )

    def execute(self, batch: Batch) -> list[int | None]:
        rows = batch.rows
        if not rows:
            return []
        self.apply_threads()
        parts = micro_batches(batch, self.num_micro_batches)
        steps = [prepare_inputs(part, self.block_size, self.device) for part in parts]
        self.collective.broadcast_step(steps)
        last = self.collective.world_size - 1
        sends = [
            self.collective.send(self.decoder.forward(inputs, None), 1, tag)
            for tag, inputs in enumerate(steps)
        ]
        logits = [
            self.collective.receive(
                torch.empty((len(inputs.sample_index), self.vocab_size)), last, tag
            )
            for tag, inputs in enumerate(steps)
            if len(inputs.sample_index) > 0
        ]
        for work in sends:
            work.wait()
        sampling = [row.seq for row in rows if row.samples]
        if not sampling:
            return [None] * len(rows)
        tokens = iter(self.sampler.sample(torch.cat(logits), sampling))
        return [next(tokens) if row.samples else None for row in rows]

    def close(self) -> None:
        """Tell the other stages to stop and wait for them."""
        stop_workers(self.collective, self.workers)
