"""Rate limits over HTTP: one limit across two replicas sharing Redis, headers, cut-off streams."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from tests.conftest import settings_for
from tests.support.servers import RunningServer, start_server, wait_until

from openautoglm.backends.text import count_tokens
from openautoglm.config.settings import ModelConfig
from openautoglm.contexts.windowing import make_token_counter
from openautoglm.core.clock import ManualClock
from openautoglm.core.types import Message

REDIS_URL = os.environ.get("AUTOGLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def redis_or_skip() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningServer]]:
    """Two app instances on different ports sharing one database, one Redis and a frozen clock."""
    redis_or_skip()
    data_dir: Path = tmp_path_factory.mktemp("replicas")
    clock = ManualClock()  # frozen: every request falls in one minute window
    models = [ModelConfig(name="echo", backend="echo")]
    settings = settings_for(data_dir, models, redis_url=REDIS_URL)
    first = start_server(settings, clock=clock)
    second = start_server(settings, clock=clock)
    yield [first, second]
    second.stop()
    first.stop()


def issue_key(server: RunningServer, admin_key: str, **limits: int) -> str:
    response = httpx.post(
        server.base_url + "/v1/admin/keys",
        headers={"Authorization": f"Bearer {admin_key}"},
        json={"role": "developer", "limits": limits, "name": f"limited-{secrets.token_hex(3)}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["secret"])


async def test_sixty_per_minute_across_two_replicas_is_exactly_sixty(
    replicas: list[RunningServer],
) -> None:
    admin_key = replicas[0].admin_key
    key = issue_key(replicas[0], admin_key, requests_per_minute=60)
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    clients = [
        httpx.AsyncClient(base_url=r.base_url, headers=headers, timeout=30) for r in replicas
    ]
    try:
        responses = await asyncio.gather(
            *(clients[i % 2].post("/v1/chat/completions", json=body) for i in range(100))
        )
    finally:
        for client in clients:
            await client.aclose()
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 60 and statuses.count(429) == 40
    refused = next(r for r in responses if r.status_code == 429)
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and "requests per minute" in error["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "60"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    served = [r for r in responses if r.status_code == 200]
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in served)
    assert remaining == list(range(60))


def test_tenant_limits_apply_to_all_its_keys(replicas: list[RunningServer]) -> None:
    server = replicas[0]
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    tenant = httpx.post(
        server.base_url + "/v1/admin/tenants",
        headers=admin,
        json={"name": f"capped-{secrets.token_hex(3)}", "limits": {"requests_per_minute": 3}},
    ).json()
    keys = [
        httpx.post(
            server.base_url + "/v1/admin/keys",
            headers=admin,
            json={"tenant_id": tenant["id"], "role": "developer"},
        ).json()["secret"]
        for _ in range(2)
    ]
    statuses = [
        httpx.post(
            replicas[i % 2].base_url + "/v1/generate",
            headers={"Authorization": f"Bearer {keys[i % 2]}"},
            json={"prompt": "x", "model": "echo"},
        ).status_code
        for i in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]


def test_a_cut_off_stream_is_charged_what_it_produced(
    server: RunningServer, admin_key: str
) -> None:
    key = issue_key(server, admin_key, tokens_per_minute=100_000)
    words = " ".join(f"w{i}" for i in range(400))  # echo-slow: 20 words/s
    messages = [{"role": "user", "content": words}]
    raw = orjson.dumps(
        {"model": "echo-slow", "stream": True, "max_tokens": 500, "messages": messages}
    )
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"data: ") < 4:  # the role event and three words
            received += sock.recv(4096)
    backend = server.services.catalog.get("echo-slow").instances[0].backend
    assert wait_until(lambda: backend.active_generations == 0, timeout_s=5)  # type: ignore[attr-defined]
    assert wait_until(lambda: server.services.catalog.get("echo-slow").instances[0].in_flight == 0)

    probe = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "echo", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
    )
    count = make_token_counter(count_tokens)
    probe_reservation = count([Message(role="user", content="x")]) + 1
    stream_prompt = count([Message(role="user", content=words)])
    charged = 100_000 - int(probe.headers["x-ratelimit-remaining-tokens"]) - probe_reservation
    assert stream_prompt + 3 <= charged <= stream_prompt + 30, (charged, stream_prompt)


def test_revocation_reaches_the_other_replica_at_once(replicas: list[RunningServer]) -> None:
    first, second = replicas
    for replica in replicas:
        assert wait_until(lambda r=replica: r.services.key_events.subscribed.is_set())  # type: ignore[attr-defined]
    key = httpx.post(
        first.base_url + "/v1/admin/keys",
        headers={"Authorization": f"Bearer {first.admin_key}"},
        json={"role": "developer"},
    ).json()
    call = {"prompt": "x", "model": "echo"}
    bearer = {"Authorization": f"Bearer {key['secret']}"}
    assert (
        httpx.post(second.base_url + "/v1/generate", headers=bearer, json=call).status_code == 200
    )
    # The clock is frozen, so the second replica's cache never ages: only the Redis event can
    # make it forget the key.
    revoked = httpx.post(
        first.base_url + f"/v1/admin/keys/{key['id']}/revoke",
        headers={"Authorization": f"Bearer {first.admin_key}"},
    )
    assert revoked.status_code == 200
    assert wait_until(
        lambda: (
            httpx.post(second.base_url + "/v1/generate", headers=bearer, json=call).status_code
            == 401
        ),
        timeout_s=1.0,
    )
