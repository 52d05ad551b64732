"""The ``openai`` backend against a fake OpenAI-compatible upstream on a real socket.

What is sent upstream (body, auth), how answers and streams come back (chunk by chunk, closing
the consumer closes the connection) and how every kind of upstream failure becomes one of our
errors. The fake is ``tests.support.fake_upstream``; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from tests.support.fake_upstream import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    EMBEDDINGS_PATH,
    Answer,
    Drop,
    Embeddings,
    ErrorReply,
    FakeUpstream,
    Garbage,
    Hang,
    StreamError,
    closed_port_url,
)

from openautoglm.backends.base import collect
from openautoglm.backends.openai_upstream import OpenAIUpstreamBackend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    OpenAutoGLMError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from openautoglm.core.types import (
    Chunk,
    ContentPart,
    GenerationRequest,
    Message,
    SamplingParams,
    Usage,
)

SERVED_NAME = "my-model"
TIMEOUT_S = 0.5
DEADLINE_S = 5.0  # generous bound for anything that should happen "at once"


def make_backend(base_url: str, **overrides: object) -> OpenAIUpstreamBackend:
    settings: dict[str, object] = {
        "backend": "openai",
        "base_url": base_url,
        "api_key": "up-key",
        "timeout_s": TIMEOUT_S,
    }
    return OpenAIUpstreamBackend(InstanceConfig(**{**settings, **overrides}), SERVED_NAME)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest_asyncio.fixture
async def backend(fake: FakeUpstream) -> AsyncIterator[OpenAIUpstreamBackend]:
    started = make_backend(fake.base_url)
    await started.start()
    yield started
    await started.close()


def chat(text: str = "hi", *, stream: bool = False, **params: object) -> GenerationRequest:
    return GenerationRequest(
        request_id="req-1",
        model=SERVED_NAME,
        kind="chat",
        messages=(Message(role="user", content=text),),
        params=SamplingParams(**params),  # type: ignore[arg-type]
        stream=stream,
    )


def completion(prompt: str = "Once upon", *, stream: bool = False) -> GenerationRequest:
    return GenerationRequest(
        request_id="req-1", model=SERVED_NAME, kind="completion", prompt=prompt, stream=stream
    )


async def chunks_of(backend: OpenAIUpstreamBackend, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in backend.generate(request)]


async def next_chunk(stream: AsyncIterator[Chunk]) -> Chunk:
    return await asyncio.wait_for(anext(stream), DEADLINE_S)


# --- what is sent upstream ------------------------------------------------------------------


async def test_chat_request_carries_messages_params_and_auth(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    request = GenerationRequest(
        request_id="req-1",
        model=SERVED_NAME,
        kind="chat",
        messages=(
            Message(role="system", content="Be brief."),
            Message(
                role="user",
                content=(
                    ContentPart(type="text", text="What is in this picture?"),
                    ContentPart(type="image_url", image_url=image, detail="low"),
                    ContentPart(type="image_url", image_url="https://example.com/cat.png"),
                ),
                name="alice",
            ),
        ),
        params=SamplingParams(
            temperature=0.3, top_p=0.9, max_tokens=16, stop=("END", "\n\n"), seed=7
        ),
        user="user-42",
    )

    await chunks_of(backend, request)

    sent = fake.last_request
    assert (sent.method, sent.path) == ("POST", CHAT_PATH)
    assert sent.headers["Authorization"] == "Bearer up-key"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body == {
        "model": SERVED_NAME,
        "stream": False,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
                "name": "alice",
            },
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 16,
        "seed": 7,
        "stop": ["END", "\n\n"],
        "user": "user-42",
    }


async def test_unset_params_are_not_sent(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    await chunks_of(backend, chat("hi"))

    assert fake.last_request.body == {
        "model": SERVED_NAME,
        "stream": False,
        "messages": [{"role": "user", "content": "hi"}],
    }


async def test_priority_is_sent_only_when_forwarding_is_asked_for(fake: FakeUpstream) -> None:
    request = dataclasses.replace(chat(), priority=2)
    plain = make_backend(fake.base_url)
    forwarding = OpenAIUpstreamBackend(
        InstanceConfig(backend="openai", base_url=fake.base_url),
        SERVED_NAME,
        forward_priority=True,
    )
    for backend in (plain, forwarding):
        await backend.start()
        try:
            await chunks_of(backend, request)
            await chunks_of(backend, chat())  # no priority of its own: none is sent
        finally:
            await backend.close()

    assert [r.body.get("priority") for r in fake.requests] == [None, None, 2, None]


async def test_engine_sampling_extensions_are_sent_only_when_set(fake: FakeUpstream) -> None:
    extended = dataclasses.replace(
        chat(),
        params=SamplingParams(top_k=20, repetition_penalty=1.1, stop_token_ids=(7, 9)),
    )
    backend = make_backend(fake.base_url)
    await backend.start()
    try:
        await chunks_of(backend, extended)
        await chunks_of(backend, chat())
    finally:
        await backend.close()
    sent, plain = (r.body for r in fake.requests)
    assert (sent["top_k"], sent["repetition_penalty"], sent["stop_token_ids"]) == (20, 1.1, [7, 9])
    assert not {"top_k", "repetition_penalty", "stop_token_ids"} & set(plain)


async def test_upstream_model_overrides_the_served_name(fake: FakeUpstream) -> None:
    backend = make_backend(fake.base_url, upstream_model="Qwen/Qwen2.5-7B-Instruct")
    await backend.start()
    try:
        await chunks_of(backend, chat())
        await backend.embed(["x"])
    finally:
        await backend.close()

    assert [r.body["model"] for r in fake.requests] == ["Qwen/Qwen2.5-7B-Instruct"] * 2


async def test_no_api_key_sends_no_authorization(fake: FakeUpstream) -> None:
    backend = make_backend(fake.base_url, api_key=None)
    await backend.start()
    try:
        await chunks_of(backend, chat())
    finally:
        await backend.close()

    assert "Authorization" not in fake.last_request.headers


async def test_stream_request_asks_for_usage(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    await chunks_of(backend, chat(stream=True))

    body = fake.last_request.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_completion_uses_completions_path_and_prompt(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(COMPLETIONS_PATH, Answer(chunks=(" a time",), finish_reason="length"))

    [answer] = await chunks_of(backend, completion("Once upon"))

    assert fake.last_request.path == COMPLETIONS_PATH
    assert fake.last_request.body == {"model": SERVED_NAME, "stream": False, "prompt": "Once upon"}
    assert answer == Chunk(text=" a time", finish_reason="length", usage=Usage(5, 3))


# --- whole answers --------------------------------------------------------------------------


async def test_whole_answer_has_text_finish_reason_and_usage(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(
        CHAT_PATH,
        Answer(
            chunks=("Hi", " there"), finish_reason="length", prompt_tokens=11, completion_tokens=2
        ),
    )

    answer = await chunks_of(backend, chat())

    assert answer == [Chunk(text="Hi there", finish_reason="length", usage=Usage(11, 2))]


@pytest.mark.parametrize(
    ("upstream_reason", "ours"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "stop"),
        (None, "stop"),
    ],
)
async def test_finish_reasons_map_to_ours(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend, upstream_reason: str | None, ours: str
) -> None:
    fake.on(CHAT_PATH, Answer(finish_reason=upstream_reason))

    [answer] = await chunks_of(backend, chat())
    streamed = await collect(backend.generate(chat(stream=True)))

    assert answer.finish_reason == ours
    assert streamed.finish_reason == ours


async def test_whole_answer_without_usage_counts_zero(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(CHAT_PATH, Answer(send_usage=False))

    [answer] = await chunks_of(backend, chat())

    assert answer.usage == Usage()


# --- streams --------------------------------------------------------------------------------


async def test_stream_yields_each_upstream_chunk_then_finish_and_usage(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(
        CHAT_PATH, Answer(chunks=("The", " quick", " fox"), prompt_tokens=9, completion_tokens=3)
    )

    chunks = await chunks_of(backend, chat(stream=True))

    assert chunks == [
        Chunk(text="The"),
        Chunk(text=" quick"),
        Chunk(text=" fox"),
        Chunk(finish_reason="stop", usage=Usage(9, 3)),
    ]
    assert (fake.streams_finished, fake.streams_aborted) == (1, 0)


async def test_completion_stream_yields_text_chunks(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(COMPLETIONS_PATH, Answer(chunks=(" a", " time"), finish_reason="length"))

    chunks = await chunks_of(backend, completion(stream=True))

    assert fake.last_request.path == COMPLETIONS_PATH
    assert chunks == [
        Chunk(text=" a"),
        Chunk(text=" time"),
        Chunk(finish_reason="length", usage=Usage(5, 3)),
    ]


async def test_stream_without_usage_from_upstream_ends_with_zero_usage(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(CHAT_PATH, Answer(chunks=("a",), send_usage=False))

    chunks = await chunks_of(backend, chat(stream=True))

    assert chunks[-1] == Chunk(finish_reason="stop", usage=Usage())


async def test_stream_passes_chunks_through_without_buffering(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    release = asyncio.Event()
    fake.on(CHAT_PATH, Answer(chunks=("first", " second", " third"), release=release, hold_after=1))
    stream = backend.generate(chat(stream=True))

    first = await next_chunk(stream)

    # The upstream has sent the role event and "first" only, and is still holding the rest.
    assert first == Chunk(text="first")
    assert not release.is_set()
    assert fake.events_sent == 2
    assert fake.streams_open == 1

    release.set()
    rest = [chunk async for chunk in stream]
    assert [chunk.text for chunk in rest] == [" second", " third", ""]
    assert rest[-1].finish_reason == "stop"
    assert fake.streams_finished == 1


async def test_closing_the_consumer_closes_the_upstream_connection(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    never = asyncio.Event()
    fake.on(CHAT_PATH, Answer(chunks=("one", " two", " three"), release=never, hold_after=1))
    stream = backend.generate(chat(stream=True))
    assert await next_chunk(stream) == Chunk(text="one")
    assert fake.streams_open == 1

    await stream.aclose()  # type: ignore[attr-defined]

    assert await fake.wait_for(lambda: fake.streams_aborted == 1, timeout_s=DEADLINE_S)
    assert fake.streams_open == 0
    assert fake.streams_finished == 0
    assert not never.is_set()


async def test_backend_serves_again_after_an_abandoned_stream(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(CHAT_PATH, Answer(chunks=("one", " two"), release=asyncio.Event(), hold_after=1))
    stream = backend.generate(chat(stream=True))
    await next_chunk(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    fake.on(CHAT_PATH, Answer(chunks=("fresh",)))

    [answer] = await chunks_of(backend, chat())

    assert answer.text == "fresh"


# --- upstream failures ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("reply", "error_type", "status"),
    [
        (ErrorReply(400, "'messages' is too long"), InvalidRequestError, 400),
        (ErrorReply(422, "temperature must be <= 2"), InvalidRequestError, 400),
        (ErrorReply(401, "Incorrect API key", type="authentication_error"), UpstreamError, 502),
        (ErrorReply(404, "model not found", code="model_not_found"), UpstreamError, 502),
        (ErrorReply(500, "internal error", type="server_error"), UpstreamError, 502),
    ],
    ids=["400", "422", "401", "404", "500"],
)
async def test_upstream_error_statuses_map_to_our_errors(
    fake: FakeUpstream,
    backend: OpenAIUpstreamBackend,
    reply: ErrorReply,
    error_type: type[OpenAutoGLMError],
    status: int,
    stream: bool,
) -> None:
    fake.on(CHAT_PATH, reply)

    with pytest.raises(error_type) as caught:
        await chunks_of(backend, chat(stream=stream))

    assert type(caught.value) is error_type
    assert caught.value.status == status
    assert reply.message in caught.value.message


async def test_upstream_validation_error_keeps_the_upstream_message(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(CHAT_PATH, ErrorReply(400, "This model's maximum context length is 2048 tokens"))

    with pytest.raises(InvalidRequestError) as caught:
        await chunks_of(backend, chat())

    assert caught.value.message == "This model's maximum context length is 2048 tokens"
    assert caught.value.code == "upstream_rejected_request"


async def test_upstream_429_keeps_retry_after(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(
        CHAT_PATH,
        ErrorReply(429, "Rate limit reached", type="requests", headers={"Retry-After": "7"}),
    )

    with pytest.raises(RateLimitError) as caught:
        await chunks_of(backend, chat())

    assert caught.value.status == 429
    assert caught.value.retry_after_s == 7.0
    assert "Rate limit reached" in caught.value.message


async def test_upstream_503_is_service_unavailable_with_retry_after(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(CHAT_PATH, ErrorReply(503, "overloaded", headers={"Retry-After": "2.5"}))

    with pytest.raises(ServiceUnavailableError) as caught:
        await chunks_of(backend, chat(stream=True))

    assert caught.value.status == 503
    assert caught.value.retry_after_s == 2.5


async def test_upstream_429_without_usable_retry_after(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    http_date = "Wed, 21 Oct 2015 07:28:00 GMT"
    fake.on(CHAT_PATH, ErrorReply(429, "slow down", headers={"Retry-After": http_date}))

    with pytest.raises(RateLimitError) as caught:
        await chunks_of(backend, chat())

    assert caught.value.retry_after_s is None


async def test_error_body_that_is_not_json_is_kept_as_text(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(CHAT_PATH, ErrorReply(500, raw_body=b"<html>upstream exploded</html>"))

    with pytest.raises(UpstreamError) as caught:
        await chunks_of(backend, chat())

    assert caught.value.status == 502
    assert "<html>upstream exploded</html>" in caught.value.message


@pytest.mark.parametrize(
    "body",
    [b"<html>not json</html>", b"[1, 2, 3]", b'{"id": "x", "choices": []}'],
    ids=["html", "json-array", "no-choices"],
)
async def test_successful_status_with_unusable_body_is_upstream_error(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend, body: bytes
) -> None:
    fake.on(CHAT_PATH, Garbage(body=body, status=200, content_type="application/json"))

    with pytest.raises(UpstreamError) as caught:
        await chunks_of(backend, chat())

    assert caught.value.status == 502


async def test_stream_event_that_is_not_json_is_upstream_error(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(CHAT_PATH, Garbage(body=b"data: {oops\n\n", content_type="text/event-stream"))

    with pytest.raises(UpstreamError):
        await chunks_of(backend, chat(stream=True))


async def test_error_event_mid_stream_is_upstream_error_after_the_chunks_before_it(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(CHAT_PATH, StreamError(message="CUDA out of memory", chunks_before=2))
    received: list[Chunk] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in backend.generate(chat(stream=True)):
            received.append(chunk)

    assert [chunk.text for chunk in received] == ["part0 ", "part1 "]
    assert caught.value.status == 502
    assert "CUDA out of memory" in caught.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_connection_dropped_mid_answer_is_one_of_our_errors(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend, stream: bool
) -> None:
    fake.on(CHAT_PATH, Drop(chunks_before=1))

    with pytest.raises(OpenAutoGLMError) as caught:
        await chunks_of(backend, chat(stream=stream))

    assert caught.value.status in (502, 503)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_connection_refused_is_service_unavailable(stream: bool) -> None:
    backend = make_backend(closed_port_url())
    await backend.start()
    try:
        with pytest.raises(ServiceUnavailableError) as caught:
            await chunks_of(backend, chat(stream=stream))
        with pytest.raises(ServiceUnavailableError):
            await backend.embed(["x"])
    finally:
        await backend.close()

    assert caught.value.status == 503
    assert caught.value.code == "upstream_unreachable"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_upstream_that_hangs_past_timeout_is_deadline_exceeded(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend, stream: bool
) -> None:
    fake.on(CHAT_PATH, Hang())
    started = time.monotonic()

    with pytest.raises(DeadlineExceededError) as caught:
        await chunks_of(backend, chat(stream=stream))

    elapsed_s = time.monotonic() - started
    assert caught.value.status == 504
    assert TIMEOUT_S * 0.9 <= elapsed_s < DEADLINE_S
    # Giving up also hangs up: the fake sees the request's connection go away.
    assert await fake.wait_for(lambda: fake.requests_abandoned == 1, timeout_s=DEADLINE_S)


async def test_a_long_stream_that_keeps_sending_outlives_timeout_s(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    gap_s = TIMEOUT_S * 0.6  # each gap is within the timeout; the whole stream is not
    fake.on(CHAT_PATH, Answer(chunks=("a", "b", "c", "d"), delay_s=gap_s))
    started = time.monotonic()

    chunks = await chunks_of(backend, chat(stream=True))

    assert "".join(chunk.text for chunk in chunks) == "abcd"
    assert time.monotonic() - started > TIMEOUT_S


async def test_embed_that_hangs_is_deadline_exceeded(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(EMBEDDINGS_PATH, Hang())

    with pytest.raises(DeadlineExceededError):
        await backend.embed(["x"])


async def test_generate_before_start_is_service_unavailable(fake: FakeUpstream) -> None:
    backend = make_backend(fake.base_url)

    with pytest.raises(ServiceUnavailableError) as caught:
        await chunks_of(backend, chat())

    assert caught.value.code == "backend_not_started"
    assert fake.requests == []


# --- embeddings -----------------------------------------------------------------------------


async def test_embed_returns_vectors_in_input_order_with_usage(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(
        EMBEDDINGS_PATH, Embeddings(vectors=((1.0, 0.0), (0.0, 1.0), (0.5, 0.5)), prompt_tokens=6)
    )

    result = await backend.embed(["a", "b", "c"])

    assert fake.last_request.path == EMBEDDINGS_PATH
    assert fake.last_request.body == {"model": SERVED_NAME, "input": ["a", "b", "c"]}
    assert fake.last_request.headers["Authorization"] == "Bearer up-key"
    assert result.vectors == ((1.0, 0.0), (0.0, 1.0), (0.5, 0.5))
    assert result.usage == Usage(prompt_tokens=6)


async def test_embed_maps_upstream_errors(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    fake.on(EMBEDDINGS_PATH, ErrorReply(400, "model does not support embeddings"))
    with pytest.raises(InvalidRequestError) as caught:
        await backend.embed(["x"])
    assert caught.value.message == "model does not support embeddings"

    fake.on(EMBEDDINGS_PATH, Garbage(body=b'{"data": [{"index": 0}]}'))
    with pytest.raises(UpstreamError):
        await backend.embed(["x"])


# --- health ---------------------------------------------------------------------------------


async def test_health_is_true_when_the_upstream_answers(
    fake: FakeUpstream, backend: OpenAIUpstreamBackend
) -> None:
    assert await backend.health() is True
    assert (fake.last_request.method, fake.last_request.path) == ("GET", "/v1/models")
    assert fake.last_request.headers["Authorization"] == "Bearer up-key"


async def test_health_is_false_when_nothing_listens() -> None:
    backend = make_backend(closed_port_url())
    await backend.start()
    try:
        assert await backend.health() is False
    finally:
        await backend.close()
