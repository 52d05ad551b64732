"""The echo backend: deterministic text, limits, latency and injected failures."""

from __future__ import annotations

import pytest

from openautoglm.backends.base import collect
from openautoglm.backends.echo import EchoBackend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import BackendFailure
from openautoglm.core.types import GenerationRequest, Message, SamplingParams


def chat(text: str, **params: object) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        model="echo",
        kind="chat",
        messages=(Message(role="system", content="sys"), Message(role="user", content=text)),
        params=SamplingParams(**params),  # type: ignore[arg-type]
    )


async def test_streams_words_and_cjk_characters() -> None:
    backend = EchoBackend(InstanceConfig(backend="echo"))
    pieces = [
        chunk.text async for chunk in backend.generate(chat("hello world 你好")) if chunk.text
    ]
    assert pieces == ["hello ", "world ", "你", "好"]


async def test_max_tokens_stop_and_usage() -> None:
    backend = EchoBackend(InstanceConfig(backend="echo"))
    limited = await collect(backend.generate(chat("a b c d", max_tokens=2)))
    assert (limited.text, limited.finish_reason, limited.usage.completion_tokens) == (
        "a b ",
        "length",
        2,
    )
    stopped = await collect(backend.generate(chat("a b c d", stop=("c",))))
    assert (stopped.text, stopped.finish_reason) == ("a b ", "stop")
    assert stopped.usage.prompt_tokens == 5  # "sys" + 4 words


async def test_configured_reply_and_failure_rate_are_deterministic() -> None:
    replying = EchoBackend(InstanceConfig(backend="echo", reply="fixed answer"))
    assert (await collect(replying.generate(chat("anything")))).text == "fixed answer"
    flaky = [EchoBackend(InstanceConfig(backend="echo", fail_rate=0.5, seed=3)) for _ in range(2)]
    outcomes: list[list[bool]] = [[], []]
    for index, backend in enumerate(flaky):
        for _ in range(20):
            try:
                await collect(backend.generate(chat("x")))
                outcomes[index].append(True)
            except BackendFailure:
                outcomes[index].append(False)
    assert outcomes[0] == outcomes[1]
    assert 3 < outcomes[0].count(False) < 17


async def test_closing_the_stream_early_releases_it() -> None:
    backend = EchoBackend(InstanceConfig(backend="echo", tokens_per_s=1000))
    stream = backend.generate(chat("one two three four"))
    await anext(stream)
    assert backend.active_generations == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert backend.active_generations == 0


@pytest.mark.parametrize("texts", [["a"], ["a", "b", "你好"]])
async def test_embeddings_are_unit_vectors(texts: list[str]) -> None:
    result = await EchoBackend(InstanceConfig(backend="echo")).embed(texts)
    assert len(result.vectors) == len(texts)
    for vector in result.vectors:
        assert sum(v * v for v in vector) == pytest.approx(1.0)
