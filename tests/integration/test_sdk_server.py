"""The SDK against the real server: the seed's ``GLMClient.generate`` call on the demo model."""

from __future__ import annotations

import pytest
from tests.support.servers import RunningServer

from openautoglm import AsyncGLMClient, GLMClient


def test_generate_on_the_demo_model_returns_text(
    server: RunningServer, admin_key: str, demo_gguf: object
) -> None:
    with GLMClient(api_key=admin_key, base_url=server.base_url) as client:
        result = client.generate(
            "请生成一份季度销售趋势摘要",
            context_id="ctx_2024_q3_sales",
            temperature=0.7,
            max_tokens=64,
        )
    assert result.text.strip(), "the demo model must answer with text"
    assert result.id and result.context_id == "ctx_2024_q3_sales"
    assert result.model == "smollm2-135m"
    assert 0 < result.usage.completion_tokens <= 64
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_sdk_chat_stream_and_errors_against_echo(server: RunningServer, admin_key: str) -> None:
    from openautoglm.sdk import AuthenticationError, NotFoundError

    with GLMClient(api_key=admin_key, base_url=server.base_url + "/v1") as client:
        assert "echo" in client.models()
        chat = client.chat([{"role": "user", "content": "hello sdk"}], model="echo")
        assert chat.text == "hello sdk" and chat.finish_reason == "stop"
        deltas = list(client.generate("one two three", model="echo", stream=True))
        assert "".join(deltas) == "one two three" and len(deltas) == 3
        with pytest.raises(NotFoundError):
            client.generate("x", model="missing-model")
    with (
        GLMClient(api_key="sk-agl-wrong", base_url=server.base_url) as stranger,
        pytest.raises(AuthenticationError),
    ):
        stranger.generate("x", model="echo")


async def test_async_client_generates(server: RunningServer, admin_key: str) -> None:
    async with AsyncGLMClient(api_key=admin_key, base_url=server.base_url) as client:
        result = await client.generate("异步 调用", model="echo", max_tokens=8)
    assert result.text == "异步 调用"
