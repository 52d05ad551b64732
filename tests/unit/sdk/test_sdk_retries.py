"""Retries: which failures are retried, how long the client waits, and when it gives up.

Waits are recorded by an injected sleep and jitter is pinned by an injected rng (0.5 shortens the
backoff by 12.5%), so every expected wait below is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from tests.unit.sdk.fake_glm_server import API_KEY, FakeServer, Reply, error_body

from openautoglm.sdk import (
    APIConnectionError,
    APITimeoutError,
    GLMClient,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
)
from openautoglm.sdk.retry import Retrier, parse_retry_after_s

RATE_LIMITED = error_body("slow down", "rate_limit_error", "rate_limit_exceeded")
UNAVAILABLE = error_body("no healthy instance", "server_error", "service_unavailable")


def client_for(url: str, sleeps: list[float], **kwargs: Any) -> GLMClient:
    return GLMClient(
        api_key=API_KEY, base_url=url, _sleep=sleeps.append, _rng=lambda: 0.5, **kwargs
    )


def test_429_is_retried_after_the_servers_retry_after(
    fake: FakeServer, sleeps: list[float]
) -> None:
    fake.queue(Reply(429, RATE_LIMITED, headers={"Retry-After": "2"}))

    with client_for(fake.url, sleeps) as client:
        assert client.generate("x").text == "echo: x"

    assert sleeps == [2.0]
    assert len(fake.seen) == 2
    assert fake.seen[0].json == fake.seen[1].json == {"prompt": "x"}


def test_503_without_retry_after_backs_off_exponentially(
    fake: FakeServer, sleeps: list[float]
) -> None:
    fake.queue(Reply(503, UNAVAILABLE), Reply(503, UNAVAILABLE))

    with client_for(fake.url, sleeps) as client:
        assert client.models() == ["glm-4", "echo-pool"]

    assert sleeps == [0.4375, 0.875]
    assert len(fake.seen) == 3


def test_exhausted_retries_raise_the_last_rate_limit_error(
    fake: FakeServer, sleeps: list[float]
) -> None:
    fake.queue(*[Reply(429, RATE_LIMITED, headers={"Retry-After": "1"})] * 4)

    with (
        client_for(fake.url, sleeps, max_retries=3) as client,
        pytest.raises(RateLimitError) as caught,
    ):
        client.generate("x")

    assert sleeps == [1.0, 1.0, 1.0]
    assert len(fake.seen) == 4
    error = caught.value
    assert (error.status, error.code, error.type) == (
        429,
        "rate_limit_exceeded",
        "rate_limit_error",
    )
    assert (error.message, error.retry_after_s, error.request_id) == ("slow down", 1.0, "req-4")


def test_max_retries_zero_never_retries(fake: FakeServer, sleeps: list[float]) -> None:
    fake.queue(Reply(503, UNAVAILABLE, headers={"Retry-After": "1"}))

    with (
        client_for(fake.url, sleeps, max_retries=0) as client,
        pytest.raises(ServiceUnavailableError),
    ):
        client.generate("x")

    assert (sleeps, len(fake.seen)) == ([], 1)


def test_retry_after_is_capped(fake: FakeServer, sleeps: list[float]) -> None:
    fake.queue(Reply(429, RATE_LIMITED, headers={"Retry-After": "3600"}))
    policy = RetryPolicy(max_retry_after_s=30.0)

    with client_for(fake.url, sleeps, retry_policy=policy) as client:
        client.generate("x")

    assert sleeps == [30.0]


def test_retry_after_as_http_date_counts_from_the_injected_clock(
    fake: FakeServer, sleeps: list[float]
) -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    later = format_datetime(datetime(2025, 1, 2, 3, 4, 12, tzinfo=UTC), usegmt=True)
    fake.queue(Reply(503, UNAVAILABLE, headers={"Retry-After": later}))

    with client_for(fake.url, sleeps, _now=now.timestamp) as client:
        client.generate("x")

    assert sleeps == [7.0]


def test_a_stream_refused_before_it_starts_is_retried(
    fake: FakeServer, sleeps: list[float]
) -> None:
    fake.queue(Reply(429, RATE_LIMITED, headers={"Retry-After": "0"}))

    with client_for(fake.url, sleeps) as client, client.generate("a b", stream=True) as stream:
        assert "".join(stream) == "echo: a b"

    assert sleeps == [0.0]
    assert len(fake.seen) == 2


def test_refused_connections_are_retried_then_raised(free_port: int, sleeps: list[float]) -> None:
    client = client_for(f"http://127.0.0.1:{free_port}", sleeps, max_retries=2)
    with client, pytest.raises(APIConnectionError) as caught:
        client.generate("x")

    assert not isinstance(caught.value, APITimeoutError)
    assert caught.value.status is None
    assert sleeps == [0.4375, 0.875]


def test_read_timeouts_are_not_retried(sleeps: list[float]) -> None:
    attempts: list[httpx.Request] = []

    def time_out(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ReadTimeout("read timed out", request=request)

    http = httpx.Client(transport=httpx.MockTransport(time_out))
    client = client_for("http://glm.test", sleeps, http_client=http)
    with http, client, pytest.raises(APITimeoutError):
        client.generate("x")

    assert (len(attempts), sleeps) == (1, [])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Thu, 02 Jan 2025 03:04:10 GMT", 5.0),
        ("Thu, 02 Jan 2025 03:04:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now_s = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()

    assert parse_retry_after_s(value, now_s) == expected


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens_it() -> None:
    policy = RetryPolicy(initial_delay_s=1.0, max_delay_s=5.0, jitter_ratio=0.5)
    without_jitter = Retrier(10, policy, rng=lambda: 0.0)
    full_jitter = Retrier(10, policy, rng=lambda: 0.999)

    assert [without_jitter.backoff_s(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [round(full_jitter.backoff_s(n), 3) for n in range(3)] == [0.5, 1.001, 2.002]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 500, 502, 504])
def test_other_statuses_are_never_retried(status: int) -> None:
    assert Retrier(3).delay_after_status(0, status, retry_after_s=1.0) is None
