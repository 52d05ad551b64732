"""Tensor parallelism of the paged decoder across processes, with torch.distributed.

Each rank holds a contiguous share of the KV heads (with their query heads) and of the MLP's
intermediate columns; the embedding, norms and ``lm_head`` are replicated. A layer's attention and
MLP outputs are partial sums that one all-reduce per block completes. Shares may be uneven, so a
model whose head count does not divide by the world size (SmolLM2-135M: 3 KV heads on 2 ranks)
still splits — transformers' own plans refuse that case.

Rank 0 lives in the serving process and runs the engine loop; it sends each step's inputs to the
other ranks (broadcast), every rank runs the forward pass on its shard, and rank 0 samples. The
other ranks are spawned worker processes that exit when rank 0 says so or when their parent dies.

Invariant: every rank runs exactly the same sequence of forward passes (one per broadcast), so the
collectives always pair up; nothing else talks on the process group.
"""

from __future__ import annotations

import ctypes
import io
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from openautoglm.engine.model.forward import (
    KVCache,
    ModelShape,
    PagedDecoder,
    check_supported,
    model_dtype,
)

_IDLE_TIMEOUT = timedelta(days=30)  # a worker may wait that long for the next step
_PR_SET_PDEATHSIG = 1


def kv_head_shares(num_kv_heads: int, world_size: int) -> list[range]:
    """Contiguous, near-equal KV-head ranges, one per rank (earlier ranks take the extra)."""
    if world_size > num_kv_heads:
        raise ValueError(
            f"tensor_parallel_size {world_size} is more than the model's {num_kv_heads} KV heads"
        )
    base, extra = divmod(num_kv_heads, world_size)
    shares, start = [], 0
    for rank in range(world_size):
        size = base + (1 if rank < extra else 0)
        shares.append(range(start, start + size))
        start += size
    return shares


def _keep_rows(linear: Any, rows: torch.Tensor) -> None:
    linear.weight = torch.nn.Parameter(linear.weight.data[rows].clone(), requires_grad=False)
    if linear.bias is not None:
        linear.bias = torch.nn.Parameter(linear.bias.data[rows].clone(), requires_grad=False)
    linear.out_features = len(rows)


def _keep_columns(linear: Any, columns: torch.Tensor, keep_bias: bool) -> None:
    linear.weight = torch.nn.Parameter(linear.weight.data[:, columns].clone(), requires_grad=False)
    if linear.bias is not None and not keep_bias:
        linear.bias = None  # added once, by rank 0, not once per rank
    linear.in_features = len(columns)


def shard_model(model: Any, rank: int, world_size: int) -> ModelShape:
    """Cut ``model``'s decoder layers down to this rank's share, in place; its local shape."""
    check_supported(model.config)
    full = ModelShape.of(model.config)
    group = full.num_heads // full.num_kv_heads
    kv_heads = kv_head_shares(full.num_kv_heads, world_size)[rank]
    d = full.head_dim
    kv_rows = torch.arange(kv_heads.start * d, kv_heads.stop * d)
    q_rows = torch.arange(kv_heads.start * group * d, kv_heads.stop * group * d)
    intermediate = model.config.intermediate_size
    per_rank = -(-intermediate // world_size)
    mlp_rows = torch.arange(rank * per_rank, min(intermediate, (rank + 1) * per_rank))
    for layer in model.model.layers[: full.num_layers]:
        attn, mlp = layer.self_attn, layer.mlp
        _keep_rows(attn.q_proj, q_rows)
        _keep_rows(attn.k_proj, kv_rows)
        _keep_rows(attn.v_proj, kv_rows)
        _keep_columns(attn.o_proj, q_rows, keep_bias=rank == 0)
        _keep_rows(mlp.gate_proj, mlp_rows)
        _keep_rows(mlp.up_proj, mlp_rows)
        _keep_columns(mlp.down_proj, mlp_rows, keep_bias=rank == 0)
    return ModelShape(full.num_layers, len(kv_heads) * group, len(kv_heads), d)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Collective:
    """A private gloo process group (the default group is left alone)."""

    group: Any
    rank: int
    world_size: int
    store: Any

    @classmethod
    def connect(cls, rank: int, world_size: int, port: int) -> Collective:
        store = dist.TCPStore(  # type: ignore[attr-defined]
            "127.0.0.1", port, world_size, is_master=rank == 0, timeout=timedelta(seconds=300)
        )
        group = dist.ProcessGroupGloo(store, rank, world_size, _IDLE_TIMEOUT)
        return cls(group, rank, world_size, store)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        self.group.allreduce([tensor]).wait()
        return tensor

    def broadcast_step(self, step: Any) -> Any:
        """Rank 0 sends ``step`` (any picklable value; ``None`` means stop); the others get it."""
        if self.rank == 0:
            buffer = io.BytesIO()
            torch.save(step, buffer)
            payload = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
            size = torch.tensor([payload.numel()], dtype=torch.long)
        else:
            size = torch.zeros(1, dtype=torch.long)
        self.group.broadcast(size, 0).wait()
        if self.rank != 0:
            payload = torch.empty(int(size.item()), dtype=torch.uint8)
        self.group.broadcast(payload, 0).wait()
        if self.rank == 0:
            return step
        return torch.load(io.BytesIO(payload.numpy().tobytes()), weights_only=False)

    def send(self, tensor: torch.Tensor, to_rank: int, tag: int) -> Any:
        """Start sending ``tensor``; the returned work must be waited on before it is reused."""
        return self.group.send([tensor.contiguous()], to_rank, tag)

    def receive(self, into: torch.Tensor, from_rank: int, tag: int) -> torch.Tensor:
        self.group.recv([into], from_rank, tag).wait()
        return into


def build_sharded_decoder(
    model: Any, collective: Collective, num_blocks: int, block_size: int
) -> PagedDecoder:
    """Shard ``model`` for ``collective.rank`` and give it a KV cache for its heads only."""
    shape = shard_model(model, collective.rank, collective.world_size)
    dtype = model_dtype(model)
    cache = KVCache.allocate(
        shape.num_layers,
        num_blocks * block_size,
        shape.num_kv_heads,
        shape.head_dim,
        dtype,
        torch.device(model.device),
    )
    decoder = PagedDecoder(model, shape, cache)
    decoder.reduce = collective.all_reduce
    return decoder


def die_with_parent() -> None:
    """Ask Linux to end this process when its parent dies (no orphaned ranks after kill -9)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:
        os._exit(0)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a spawned rank needs (picklable): where to meet, how to load, how big a cache."""

    rank: int
    world_size: int
    port: int
    load: Callable[[], Any]
    num_blocks: int
    block_size: int
    num_threads: int


def join_group(spec: WorkerSpec) -> tuple[Any, Collective]:
    """In a spawned rank: tie its life to the parent, load the model, join the group."""
    die_with_parent()
    torch.set_num_threads(spec.num_threads)
    model = spec.load()
    return model, Collective.connect(spec.rank, spec.world_size, spec.port)


def worker_main(spec: WorkerSpec) -> None:
    """A rank other than 0: load, shard, then run each step rank 0 broadcasts until told to stop."""
    model, collective = join_group(spec)
    decoder = build_sharded_decoder(model, collective, spec.num_blocks, spec.block_size)
    while (inputs := collective.broadcast_step(None)) is not None:
        decoder.logits(inputs)


def start_workers(
    world_size: int,
    load: Callable[[], Any],
    num_blocks: int,
    block_size: int,
    num_threads: int,
    target: Callable[..., None] = worker_main,
) -> tuple[Collective, list[Any]]:
    """Spawn ranks 1..N-1 running ``target`` and join them in a process group as rank 0."""
    port = free_port()
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=target,
            args=(WorkerSpec(rank, world_size, port, load, num_blocks, block_size, num_threads),),
            name=f"tp-rank-{rank}",
            daemon=True,
        )
        for rank in range(1, world_size)
    ]
    for worker in workers:
        worker.start()
    return Collective.connect(0, world_size, port), workers


def stop_workers(collective: Collective, workers: list[Any]) -> None:
    """Tell the other ranks to stop (rank 0 only) and wait for them; kill one that hangs."""
    collective.broadcast_step(None)
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()
