"""AsyncGLMClient against the fake server: the same contract as the sync client, awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from tests.unit.sdk.fake_glm_server import API_KEY, FakeServer, Reply, error_body, sse

from openautoglm.sdk import (
    AsyncGLMClient,
    DeadlineExceededError,
    Generation,
    NotFoundError,
    RateLimitError,
    Usage,
)

MakeClient = Callable[..., AsyncGLMClient]


@pytest.fixture
async def make_client(fake: FakeServer, sleeps: list[float]) -> AsyncIterator[MakeClient]:
    clients: list[AsyncGLMClient] = []

    async def record_sleep(delay_s: float) -> None:
        sleeps.append(delay_s)

    def make(**kwargs: Any) -> AsyncGLMClient:
        kwargs.setdefault("base_url", fake.url + "/v1")
        client = AsyncGLMClient(api_key=API_KEY, _sleep=record_sleep, _rng=lambda: 0.5, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.mark.asyncio
async def test_generate(make_client: MakeClient, fake: FakeServer) -> None:
    generation = await make_client().generate("hi", "ctx_1", 0.5, 4, seed=7)

    assert generation == Generation(
        text="echo: hi",
        usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
        id="gen-1",
        model="echo-pool",
        finish_reason="stop",
        context_id="ctx_1",
        instance="echo-pool/a",
        created=1700000000,
        request_id="req-1",
    )
    assert fake.seen[0].json == {
        "prompt": "hi",
        "context_id": "ctx_1",
        "temperature": 0.5,
        "max_tokens": 4,
        "seed": 7,
    }
    assert fake.seen[0].headers["user-agent"].startswith("openautoglm-sdk/")


@pytest.mark.asyncio
async def test_chat_and_models(make_client: MakeClient) -> None:
    client = make_client()

    result = await client.chat([{"role": "user", "content": "ping"}], "glm-4")

    assert (result.text, result.model, result.finish_reason) == ("reply: ping", "glm-4", "stop")
    assert await client.models() == ["glm-4", "echo-pool"]


@pytest.mark.asyncio
async def test_generate_stream(make_client: MakeClient) -> None:
    stream = await make_client().generate("a b", stream=True)
    async with stream:
        deltas = [delta async for delta in stream]

    assert deltas == ["echo:", " a", " b"]
    assert (stream.text, stream.finish_reason) == ("echo: a b", "stop")
    assert stream.usage == Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)


@pytest.mark.asyncio
async def test_chat_stream_reports_usage(make_client: MakeClient) -> None:
    stream = await make_client().chat("a b", stream=True)
    async with stream:
        assert "".join([delta async for delta in stream]) == "reply: a b"

    assert stream.usage == Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)


@pytest.mark.asyncio
async def test_error_event_mid_stream(make_client: MakeClient, fake: FakeServer) -> None:
    error = {"message": "too slow", "type": "server_error", "code": "deadline_exceeded"}
    fake.queue(Reply(chunks=[sse({"id": "g", "text": "so"}), sse({"error": error})]))
    received: list[str] = []

    stream = await make_client().generate("x", stream=True)
    with pytest.raises(DeadlineExceededError) as caught:
        async with stream:
            async for delta in stream:
                received.append(delta)

    assert received == ["so"]
    assert (caught.value.message, caught.value.request_id) == ("too slow", "req-1")
    assert len(fake.seen) == 1


@pytest.mark.asyncio
async def test_retries_then_gives_up(
    make_client: MakeClient, fake: FakeServer, sleeps: list[float]
) -> None:
    limited = error_body("slow down", "rate_limit_error", "rate_limit_exceeded")
    fake.queue(Reply(429, limited), Reply(503, limited, headers={"Retry-After": "4"}))
    client = make_client(max_retries=3)

    assert (await client.generate("x")).text == "echo: x"
    fake.queue(*[Reply(429, limited, headers={"Retry-After": "1"})] * 2)
    with pytest.raises(RateLimitError) as caught:
        await make_client(max_retries=1).generate("x")

    assert sleeps == [0.4375, 4.0, 1.0]
    assert (caught.value.status, caught.value.retry_after_s) == (429, 1.0)
    assert len(fake.seen) == 5


@pytest.mark.asyncio
async def test_error_answer(make_client: MakeClient, fake: FakeServer) -> None:
    fake.queue(Reply(404, error_body("no such context", "invalid_request_error", "not_found")))

    with pytest.raises(NotFoundError) as caught:
        await make_client().generate("x", context_id="ctx_missing")

    assert (caught.value.status, caught.value.code) == (404, "not_found")


@pytest.mark.asyncio
async def test_context_manager_closes_an_owned_client_only(fake: FakeServer) -> None:
    async with httpx.AsyncClient() as http:
        async with AsyncGLMClient(api_key=API_KEY, base_url=fake.url, http_client=http) as c:
            assert await c.models() == ["glm-4", "echo-pool"]
        assert not http.is_closed

    async with AsyncGLMClient(api_key=API_KEY, base_url=fake.url) as owned:
        await owned.models()
    assert owned._http.is_closed
