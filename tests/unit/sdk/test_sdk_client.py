"""GLMClient against the fake server: results, request bodies, headers, addressing, streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from tests.unit.sdk.fake_glm_server import API_KEY, FakeServer, Reply, sse

from openautoglm.sdk import (
    APIResponseError,
    AuthenticationError,
    ChatResult,
    Generation,
    GLMClient,
    ServiceUnavailableError,
    Usage,
)

MakeClient = Callable[..., GLMClient]


@pytest.fixture
def make_client(fake: FakeServer, sleeps: list[float]) -> Iterator[MakeClient]:
    clients: list[GLMClient] = []

    def make(**kwargs: Any) -> GLMClient:
        kwargs.setdefault("base_url", fake.url)
        kwargs.setdefault("api_key", API_KEY)
        client = GLMClient(**kwargs, _sleep=sleeps.append, _rng=lambda: 0.5)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_generate_returns_the_parsed_generation(make_client: MakeClient) -> None:
    generation = make_client().generate("hello world", context_id="ctx_1")

    assert generation == Generation(
        text="echo: hello world",
        usage=Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5),
        id="gen-1",
        model="echo-pool",
        finish_reason="stop",
        context_id="ctx_1",
        instance="echo-pool/a",
        created=1700000000,
        request_id="req-1",
    )


def test_generate_sends_only_the_given_fields_with_auth_and_user_agent(
    make_client: MakeClient, fake: FakeServer
) -> None:
    make_client().generate(
        "hi", temperature=0.2, max_tokens=8, model="glm-4", stop=["\n"], priority=1, deadline_ms=500
    )

    (seen,) = fake.seen
    assert (seen.method, seen.path) == ("POST", "/v1/generate")
    assert seen.json == {
        "prompt": "hi",
        "temperature": 0.2,
        "max_tokens": 8,
        "model": "glm-4",
        "stop": ["\n"],
        "priority": 1,
        "deadline_ms": 500,
    }
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert seen.headers["user-agent"].startswith("openautoglm-sdk/")
    assert seen.headers["accept"] == "application/json"
    assert seen.headers["content-type"] == "application/json"


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_works_with_or_without_v1(
    make_client: MakeClient, fake: FakeServer, suffix: str
) -> None:
    client = make_client(base_url=fake.url + suffix)

    assert client.base_url == fake.url
    assert client.models() == ["glm-4", "echo-pool"]
    assert fake.seen[0].path == "/v1/models"


def test_key_and_base_url_come_from_the_environment(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_API_KEY", API_KEY)
    monkeypatch.setenv("AUTOGLM_BASE_URL", fake.url + "/v1")

    with GLMClient() as client:
        assert client.generate("x").text == "echo: x"
    assert fake.seen[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_region_resolves_to_its_base_url(
    make_client: MakeClient, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_REGIONS", f"cn-east-2=https://b.example,cn-north-1={fake.url}/v1")

    client = make_client(base_url=None, region="cn-north-1")

    assert client.base_url == fake.url
    assert client.generate("x").text == "echo: x"


def test_missing_key_is_refused_with_a_hint(make_client: MakeClient, fake: FakeServer) -> None:
    with pytest.raises(AuthenticationError) as caught:
        make_client(api_key=None).generate("x")

    assert "authorization" not in fake.seen[0].headers
    assert caught.value.status == 401
    assert caught.value.message == (
        "invalid API key (no API key configured: pass api_key= or set AUTOGLM_API_KEY)"
    )


def test_chat_sends_openai_body_with_extensions_and_parses_the_result(
    make_client: MakeClient, fake: FakeServer
) -> None:
    result = make_client().chat(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
        model="glm-4",
        temperature=0,
        context_id="ctx_9",
        priority=0,
        response_format={"type": "text"},
    )

    assert isinstance(result, ChatResult)
    assert (result.text, result.id, result.model) == ("reply: hi there", "chatcmpl-1", "glm-4")
    assert (result.finish_reason, result.request_id) == ("stop", "req-1")
    assert result.usage == Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)
    assert result.raw["object"] == "chat.completion"
    assert fake.seen[0].path == "/v1/chat/completions"
    assert fake.seen[0].json == {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi there"},
        ],
        "model": "glm-4",
        "temperature": 0,
        "context_id": "ctx_9",
        "priority": 0,
        "response_format": {"type": "text"},
    }


def test_chat_takes_a_bare_string_as_one_user_message(
    make_client: MakeClient, fake: FakeServer
) -> None:
    assert make_client().chat("yo").text == "reply: yo"
    assert fake.seen[0].json == {"messages": [{"role": "user", "content": "yo"}]}


def test_generate_stream_yields_deltas_then_exposes_the_totals(
    make_client: MakeClient, fake: FakeServer
) -> None:
    with make_client().generate("hello world", stream=True) as stream:
        deltas = list(stream)

    assert deltas == ["echo:", " hello", " world"]
    assert stream.text == "echo: hello world"
    assert stream.usage == Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)
    assert (stream.finish_reason, stream.id, stream.model) == ("stop", "gen-1", "echo-pool")
    assert stream.request_id == "req-1"
    assert fake.seen[0].json == {"prompt": "hello world", "stream": True}
    assert fake.seen[0].headers["accept"] == "text/event-stream"


def test_chat_stream_asks_for_usage_and_reports_it(
    make_client: MakeClient, fake: FakeServer
) -> None:
    with make_client().chat("hi there", stream=True) as stream:
        deltas = list(stream)

    assert deltas == ["reply:", " hi", " there"]
    assert (stream.text, stream.finish_reason) == ("reply: hi there", "stop")
    assert stream.usage == Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)
    assert fake.seen[0].json["stream_options"] == {"include_usage": True}


def test_error_event_mid_stream_is_raised_after_the_deltas_before_it(
    make_client: MakeClient, fake: FakeServer, sleeps: list[float]
) -> None:
    chunk = {"id": "gen-7", "object": "generation.chunk", "model": "m", "finish_reason": None}
    error = {"message": "instance lost", "type": "server_error", "code": "service_unavailable"}
    fake.queue(
        Reply(
            chunks=[
                sse({**chunk, "text": "par"}) + sse({**chunk, "text": "tial"}),
                sse({"error": error}),
            ]
        )
    )
    received: list[str] = []

    with (
        pytest.raises(ServiceUnavailableError) as caught,
        make_client().generate("x", stream=True) as stream,
    ):
        for delta in stream:
            received.append(delta)

    assert received == ["par", "tial"]
    assert stream.text == "partial"
    assert (caught.value.code, caught.value.message) == ("service_unavailable", "instance lost")
    assert (caught.value.status, caught.value.request_id) == (None, "req-1")
    assert len(fake.seen) == 1
    assert sleeps == []


def test_events_split_anywhere_across_chunks_are_reassembled(
    make_client: MakeClient, fake: FakeServer
) -> None:
    wire = (
        ": keep-alive\r\n\r\n"
        + sse({"id": "g", "text": "a\u2028b", "finish_reason": None}).replace("\n", "\r\n")
        + sse({"id": "g", "text": "", "finish_reason": "length", "usage": None})
        + sse("[DONE]")
    )
    fake.queue(Reply(chunks=[wire[i : i + 7] for i in range(0, len(wire), 7)]))

    with make_client().generate("x", stream=True) as stream:
        assert list(stream) == ["a\u2028b"]
    assert (stream.finish_reason, stream.usage) == ("length", None)


def test_a_stream_cut_off_before_completion_is_an_error(
    make_client: MakeClient, fake: FakeServer
) -> None:
    fake.queue(Reply(chunks=[sse({"id": "g", "text": "half", "finish_reason": None})]))

    with make_client().generate("x", stream=True) as stream, pytest.raises(APIResponseError):
        list(stream)
    assert stream.text == "half"


def test_closing_a_stream_early_releases_it(make_client: MakeClient) -> None:
    client = make_client()
    stream = client.generate("one two three", stream=True)

    assert next(stream) == "echo:"
    stream.close()
    stream.close()

    assert list(stream) == []
    assert client.generate("again").text == "echo: again"


def test_a_passed_in_http_client_is_left_open(fake: FakeServer) -> None:
    with httpx.Client() as http:
        with GLMClient(api_key=API_KEY, base_url=fake.url, http_client=http) as client:
            assert client.models() == ["glm-4", "echo-pool"]
        assert not http.is_closed
