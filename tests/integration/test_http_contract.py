"""The wire contract: bad input, headers, health, metrics, native generate, disconnects."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from tests.support.servers import RunningServer, wait_until

from openautoglm.backends.echo import EchoBackend

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def http(server: RunningServer, admin_key: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        yield client


def assert_error(
    response: httpx.Response, status: int, error_type: str, code: str | None = None
) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["type"] == error_type
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[1, 2]", "invalid_value", None),
        (b'{"model": "echo"}', "missing_required_parameter", "messages"),
        (b'{"model": "echo", "messages": []}', "invalid_value", "messages"),
        (b'{"model": "echo", "messages": "hi"}', "invalid_value", "messages"),
        (
            b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}',
            "invalid_value",
            "model",
        ),
        (
            b'{"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}',
            "invalid_value",
            "messages.0.role",
        ),
        (
            b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            "invalid_value",
            "max_tokens",
        ),
        (
            b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "invalid_value",
            "stream",
        ),
        (
            b'{"model": "echo", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}',
            "invalid_value",
            None,
        ),
    ],
)
def test_garbage_bodies_get_400_naming_the_field(
    http: httpx.Client, body: bytes, code: str, param: str | None
) -> None:
    error = assert_error(http.post(CHAT, content=body), 400, "invalid_request_error", code)
    if param is not None:
        assert error["param"] == param
        assert param in str(error["message"])


def test_body_over_the_limit_is_413_before_reading_it(http: httpx.Client) -> None:
    body = (
        b'{"model": "echo", "messages": [{"role": "user", "content": "'
        + b"x" * (10 * 1024 * 1024)
        + b'"}]}'
    )
    assert_error(http.post(CHAT, content=body), 413, "invalid_request_error", "payload_too_large")


def test_chunked_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def pieces() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * (1024 * 1024)

    assert_error(
        http.post(CHAT, content=pieces()), 413, "invalid_request_error", "payload_too_large"
    )


def test_missing_and_invalid_keys_are_401(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url) as anonymous:
        body = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
        assert_error(
            anonymous.post(CHAT, json=body), 401, "authentication_error", "missing_api_key"
        )
        assert_error(
            anonymous.post(CHAT, json=body, headers={"Authorization": "Bearer sk-agl-wrong"}),
            401,
            "authentication_error",
            "invalid_api_key",
        )
        assert_error(
            anonymous.post(CHAT, json=body, headers={"Authorization": "Basic abc"}),
            401,
            "authentication_error",
        )
        assert_error(
            anonymous.get("/v1/models", headers={"api-key": "nope"}), 401, "authentication_error"
        )


def test_api_key_header_is_accepted(server: RunningServer, admin_key: str) -> None:
    response = httpx.get(server.base_url + "/v1/models", headers={"api-key": admin_key})
    assert response.status_code == 200


def test_auth_is_checked_before_the_body(server: RunningServer) -> None:
    response = httpx.post(server.base_url + CHAT, content=b"{garbage")
    assert_error(response, 401, "authentication_error")


def test_unknown_model_and_route(http: httpx.Client) -> None:
    body = {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}
    assert_error(http.post(CHAT, json=body), 404, "invalid_request_error", "model_not_found")
    assert_error(http.get("/v1/models/gpt-9"), 404, "invalid_request_error", "model_not_found")
    assert_error(http.get("/v1/nothing-here"), 404, "invalid_request_error", "not_found")
    assert_error(http.get(CHAT), 405, "invalid_request_error", "method_not_allowed")


def test_request_id_is_echoed_or_made(http: httpx.Client) -> None:
    assert (
        http.get("/healthz", headers={"X-Request-Id": "trace-123"}).headers["x-request-id"]
        == "trace-123"
    )
    made = http.get("/healthz", headers={"X-Request-Id": "bad id with spaces"}).headers[
        "x-request-id"
    ]
    assert made != "bad id with spaces" and len(made) == 24


def test_health_readiness_metrics_and_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["store"] is True
    assert ready.json()["models"]["echo"] is True
    http.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "count me"}]})
    metrics = http.get("/metrics").text
    assert 'autoglm_requests_total{instance="default",model="echo",outcome="ok"}' in metrics
    assert "autoglm_request_duration_seconds_bucket" in metrics
    schema = http.get("/openapi.json").json()
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/generate",
        "/v1/embeddings",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in schema["paths"], path
    chat_body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert chat_body["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatCompletionRequest"
    )
    assert "messages" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]


def test_native_generate_and_its_stream(http: httpx.Client) -> None:
    answer = http.post(
        "/v1/generate",
        json={
            "prompt": "季度 销售 摘要",
            "model": "echo",
            "context_id": "ctx_2024_q3_sales",
            "max_tokens": 64,
        },
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["text"] == "季度 销售 摘要" and body["context_id"] == "ctx_2024_q3_sales"
    assert body["model"] == "echo" and body["finish_reason"] == "stop"
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert body["id"].startswith("gen-")
    via_header = http.post(
        "/v1/generate",
        json={"prompt": "x", "model": "echo"},
        headers={"X-AutoGLM-Context-Id": "from-header"},
    )
    assert via_header.json()["context_id"] == "from-header"
    with http.stream(
        "POST", "/v1/generate", json={"prompt": "a b c", "model": "echo", "stream": True}
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert "".join(chunk["text"] for chunk in chunks) == "a b c"
    assert chunks[-1]["finish_reason"] == "stop" and chunks[-1]["usage"]["completion_tokens"] == 3


def test_generate_validates_its_body(http: httpx.Client) -> None:
    assert_error(http.post("/v1/generate", json={"prompt": ""}), 400, "invalid_request_error")
    assert_error(
        http.post("/v1/generate", json={"prompt": "x", "temperature": "hot"}),
        400,
        "invalid_request_error",
    )
    assert_error(
        http.post("/v1/generate", json={"prompt": "x", "priority": 12}),
        400,
        "invalid_request_error",
    )


def _backend_of(server: RunningServer, model: str) -> Any:
    names = [m.name for m in server.services.catalog]
    if model not in names:
        pytest.skip(f"{model} is not served (demo model not installed)")
    return server.services.catalog.get(model).instances[0].backend


def _open_stream_and_hang_up(
    server: RunningServer, admin_key: str, body: dict[str, Any], events: int
) -> None:
    raw = orjson.dumps(body)
    request = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"data: ") < events:
            piece = sock.recv(4096)
            assert piece, "server closed the stream early"
            received += piece


def test_client_disconnect_mid_stream_frees_the_generation(
    server: RunningServer, admin_key: str
) -> None:
    backend = _backend_of(server, "echo-slow")
    assert isinstance(backend, EchoBackend)
    started_before = backend.started_generations
    words = " ".join(f"w{i}" for i in range(400))  # 20 tokens/s: 20 s if nobody stops it
    body = {"model": "echo-slow", "stream": True, "messages": [{"role": "user", "content": words}]}
    _open_stream_and_hang_up(server, admin_key, body, events=3)
    assert wait_until(lambda: backend.active_generations == 0, timeout_s=5)
    assert backend.started_generations == started_before + 1
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'model="echo-slow",outcome="cancelled"' in metrics


def test_disconnect_stops_the_demo_model_decoding(server: RunningServer, admin_key: str) -> None:
    backend = _backend_of(server, "smollm2-135m")
    predicted = "llamacpp_tokens_predicted_total"
    before = backend.metrics()[predicted]
    body = {
        "model": "smollm2-135m",
        "stream": True,
        "max_tokens": 400,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
    }
    _open_stream_and_hang_up(server, admin_key, body, events=4)
    assert wait_until(lambda: backend.active_generations == 0, timeout_s=20)
    assert wait_until(lambda: backend.metrics()["llamacpp_requests_processing"] == 0, timeout_s=10)
    assert backend.metrics()[predicted] - before < 100, "decoding went on after the client left"


def test_client_leaving_a_plain_request_cancels_its_generation(
    server: RunningServer, admin_key: str
) -> None:
    backend = _backend_of(server, "echo-slow")
    cancelled_before = _cancelled_count(server, "echo-slow")
    words = " ".join(f"w{i}" for i in range(400))
    raw = orjson.dumps({"model": "echo-slow", "messages": [{"role": "user", "content": words}]})
    request = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {admin_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        assert wait_until(lambda: backend.active_generations == 1, timeout_s=5)
    assert wait_until(lambda: backend.active_generations == 0, timeout_s=5)
    assert wait_until(lambda: _cancelled_count(server, "echo-slow") == cancelled_before + 1)


def _cancelled_count(server: RunningServer, model: str) -> float:
    series = f'autoglm_requests_total{{instance="default",model="{model}",outcome="cancelled"}} '
    for line in httpx.get(server.base_url + "/metrics").text.splitlines():
        if line.startswith(series):
            return float(line.split()[-1])
    return 0.0
