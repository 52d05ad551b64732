"""The demo model on the continuous-batching engine behind the real server, with the official
``openai`` client: concurrent streams, the engine's sampling fields, and its metrics."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.conftest import settings_for
from tests.support.openapi_spec import SpecMissing, assert_valid, spec_path
from tests.support.servers import RunningServer, start_server

from openautoglm.backends.demo import find_demo_gguf
from openautoglm.config.settings import ModelConfig

MODEL = "smollm2-engine"
QUESTIONS = ["Name three colours.", "请用一句话介绍杭州。", "What is 2+2?", "Say hello in French."]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None or find_demo_gguf() is None,
        reason="needs torch and the demo model: make test-deps",
    ),
]


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir: Path = tmp_path_factory.mktemp("engine")
    gguf = find_demo_gguf()
    models = [
        ModelConfig(
            name=MODEL,
            backend="transformers",
            model_path=str(gguf),
            max_num_seqs=8,
            kv_cache_tokens=4096,
        )
    ]
    running = start_server(settings_for(data_dir, models))
    yield running
    running.stop()


async def _stream(client: openai.AsyncOpenAI, question: str) -> tuple[str, list[dict[str, object]]]:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk.model_dump(exclude_unset=True) async for chunk in stream]
    text = "".join(
        choice["delta"].get("content") or ""
        for chunk in chunks
        for choice in chunk["choices"]  # type: ignore[union-attr]
    )
    return text, chunks


def test_concurrent_streams_match_their_single_answers(engine_server: RunningServer) -> None:
    sync = openai.OpenAI(
        api_key=engine_server.admin_key, base_url=engine_server.base_url + "/v1", max_retries=0
    )
    alone = [
        sync.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": q}],
            max_tokens=12,
            temperature=0,
        )
        .choices[0]
        .message.content
        for q in QUESTIONS
    ]

    async def together() -> list[tuple[str, list[dict[str, object]]]]:
        async with openai.AsyncOpenAI(
            api_key=engine_server.admin_key, base_url=engine_server.base_url + "/v1"
        ) as client:
            return await asyncio.gather(*(_stream(client, q) for q in QUESTIONS))

    streamed = asyncio.run(together())
    assert [text for text, _ in streamed] == alone
    spec = True
    try:
        spec_path()
    except SpecMissing:
        spec = False
    for _, chunks in streamed:
        assert chunks[-1]["usage"]["completion_tokens"] <= 12  # type: ignore[index]
        if spec:
            for chunk in chunks:
                assert_valid("CreateChatCompletionStreamResponse", chunk)


def test_engine_sampling_fields_and_metrics(engine_server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {engine_server.admin_key}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a poem about the sea."}],
        "max_tokens": 10,
        "temperature": 0.8,
        "top_k": 20,
        "repetition_penalty": 1.2,
        "seed": 5,
        "priority": 0,
    }
    url = engine_server.base_url + "/v1/chat/completions"
    first = httpx.post(url, json=body, headers=headers, timeout=120)
    again = httpx.post(url, json=body, headers=headers, timeout=120)
    assert first.status_code == again.status_code == 200
    assert first.json()["choices"][0]["message"] == again.json()["choices"][0]["message"]

    bad = httpx.post(url, json={**body, "top_k": -1}, headers=headers, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_k"

    metrics = httpx.get(engine_server.base_url + "/metrics", timeout=30).text
    assert "engine_generated_tokens_total" in metrics
    assert "engine_kv_blocks_total" in metrics
