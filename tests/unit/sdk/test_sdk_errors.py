"""Error mapping: HTTP error answers and stream error events become the right GLMError."""

from __future__ import annotations

import httpx
import pytest
from tests.unit.sdk.fake_glm_server import API_KEY, FakeServer, Reply, error_body

from openautoglm.sdk import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DeadlineExceededError,
    GLMClient,
    GLMError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from openautoglm.sdk.errors import error_from_response, error_from_stream_event

CASES = [
    (400, "invalid_request_error", "invalid_request", BadRequestError),
    (401, "authentication_error", "invalid_api_key", AuthenticationError),
    (403, "permission_error", "policy_blocked", PermissionDeniedError),
    (404, "invalid_request_error", "not_found", NotFoundError),
    (404, "invalid_request_error", "model_not_found", ModelNotFoundError),
    (409, "invalid_request_error", "conflict", ConflictError),
    (413, "invalid_request_error", "payload_too_large", PayloadTooLargeError),
    (422, "invalid_request_error", "validation_error", UnprocessableEntityError),
    (500, "server_error", "backend_error", APIStatusError),
    (502, "server_error", "upstream_error", APIStatusError),
    (504, "server_error", "deadline_exceeded", DeadlineExceededError),
]


@pytest.mark.parametrize(("status", "error_type", "code", "expected"), CASES)
def test_error_answers_map_to_typed_errors_without_retry(
    fake: FakeServer,
    sleeps: list[float],
    status: int,
    error_type: str,
    code: str,
    expected: type[GLMError],
) -> None:
    fake.queue(Reply(status, error_body("it failed", error_type, code, param="model")))

    client = GLMClient(api_key=API_KEY, base_url=fake.url, _sleep=sleeps.append)
    with client, pytest.raises(GLMError) as caught:
        client.generate("x")

    error = caught.value
    assert type(error) is expected
    assert (error.status, error.type, error.code) == (status, error_type, code)
    assert (error.message, error.param, error.request_id) == ("it failed", "model", "req-1")
    assert str(error) == f"it failed [status={status}, code={code}, request_id=req-1]"
    assert (len(fake.seen), sleeps) == (1, [])


def test_a_non_json_error_body_still_maps_by_status(fake: FakeServer) -> None:
    fake.queue(Reply(502, body=b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"}))

    client = GLMClient(api_key=API_KEY, base_url=fake.url)
    with client, pytest.raises(APIStatusError) as caught:
        client.models()

    assert (caught.value.status, caught.value.code) == (502, None)
    assert caught.value.message == "<html>Bad Gateway</html>"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "HTTP 418"),
        (b'{"detail": [{"loc": ["body"], "msg": "bad"}]}', '[{"loc": ["body"], "msg": "bad"}]'),
        (b'{"error": "plain string"}', "plain string"),
        (b"[1, 2]", "[1, 2]"),
        (b"\xff\xfe", "\ufffd\ufffd"),
    ],
)
def test_odd_error_bodies_give_a_readable_message(content: bytes, message: str) -> None:
    error = error_from_response(418, content, httpx.Headers({"X-Request-Id": "r"}))

    assert type(error) is APIStatusError
    assert (error.status, error.message, error.request_id) == (418, message, "r")


def test_rate_limit_errors_carry_retry_after() -> None:
    body = b'{"error": {"message": "m", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}'
    error = error_from_response(429, body, httpx.Headers(), retry_after_s=3.0)

    assert isinstance(error, RateLimitError)
    assert error.retry_after_s == 3.0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": "deadline_exceeded", "type": "server_error"}, DeadlineExceededError),
        ({"code": "rate_limit_exceeded"}, RateLimitError),
        ({"code": "model_not_found"}, ModelNotFoundError),
        ({"type": "permission_error", "code": "output_blocked"}, PermissionDeniedError),
        ({"type": "server_error", "code": "backend_error"}, APIStatusError),
        ({}, APIStatusError),
    ],
)
def test_stream_error_events_map_by_code_then_type(
    error: dict[str, str], expected: type[GLMError]
) -> None:
    mapped = error_from_stream_event({"error": {"message": "boom", **error}}, "req-9")

    assert type(mapped) is expected
    assert (mapped.message, mapped.status, mapped.request_id) == ("boom", None, "req-9")
    assert mapped.code == error.get("code")
