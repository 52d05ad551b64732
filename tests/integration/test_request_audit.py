"""Every request that reached authentication is audited: the call chain, policy decisions,
content per the tenant's mode, refusals and admin actions; and the chain verifies."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.support.servers import RunningServer


def client(server: RunningServer, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def tenant_with(server: RunningServer, admin_key: str, policy: str) -> dict[str, str]:
    with client(server, admin_key) as platform:
        tenant = platform.post(
            "/v1/admin/tenants", json={"name": f"aud-{secrets.token_hex(4)}"}
        ).json()
        assert platform.put(
            f"/v1/admin/policies/{tenant['id']}", json={"document": policy}
        ).is_success
        developer = platform.post("/v1/admin/keys", json={"tenant_id": tenant["id"]}).json()
        auditor = platform.post(
            "/v1/admin/keys", json={"tenant_id": tenant["id"], "role": "auditor"}
        ).json()
    return {
        "id": tenant["id"],
        "developer": developer["secret"],
        "developer_id": developer["id"],
        "auditor": auditor["secret"],
    }


MASKED = """\
audit: {content: masked}
rules:
  - id: no-secrets
    type: words
    words: ["top secret"]
    apply_to: input
"""


@pytest.fixture(scope="module")
def masked(server: RunningServer, admin_key: str) -> Iterator[dict[str, str]]:
    yield tenant_with(server, admin_key, MASKED)


def event_for(server: RunningServer, key: str, request_id: str, **filters: Any) -> dict[str, Any]:
    """The audit event of ``request_id`` (written within the flush interval)."""
    deadline = time.monotonic() + 10
    with client(server, key) as http:
        while True:
            page = http.get("/v1/audit/events", params={"limit": 1000, **filters})
            assert page.status_code == 200, page.text
            for event in page.json()["data"]:
                if event["request_id"] == request_id:
                    return dict(event)
            assert time.monotonic() < deadline, f"no audit event for {request_id}"
            time.sleep(0.05)


def chat(server: RunningServer, key: str, text: str, **extra: Any) -> httpx.Response:
    with client(server, key) as http:
        body = {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}
        return http.post("/v1/chat/completions", json=body)


def test_an_answered_request_has_its_call_chain_and_masked_content(
    server: RunningServer, masked: dict[str, str]
) -> None:
    response = chat(server, masked["developer"], "我的手机是 13812345678")
    assert response.status_code == 200
    event = event_for(server, masked["auditor"], response.headers["x-request-id"])
    assert event["kind"] == "request" and event["status"] == 200
    assert event["endpoint"] == "POST /v1/chat/completions"
    assert event["tenant_id"] == masked["id"] and event["key_id"] == masked["developer_id"]
    assert event["role"] == "developer" and event["model"] == "echo"
    assert event["instance"] == "default" and event["client_ip"] == "127.0.0.1"
    assert event["error_code"] is None
    assert event["prompt"] == "user: 我的手机是 138****5678"
    assert event["answer"] == "我的手机是 138****5678"
    assert event["usage"]["completion_tokens"] > 0
    assert list(event["stages"])[:4] == ["auth", "policy_input", "queue", "route"]
    assert {"auth", "route", "context", "first_token", "generate"} <= set(event["stages"])
    assert all(ms >= 0 for ms in event["stages"].values())
    assert event["detail"]["policy"] == f"{masked['id']}@1"
    assert "13812345678" not in str(event)


def test_a_refused_request_is_audited_with_its_rule(
    server: RunningServer, masked: dict[str, str]
) -> None:
    response = chat(server, masked["developer"], "this is TOP  SECRET stuff")
    assert response.status_code == 400
    event = event_for(server, masked["auditor"], response.headers["x-request-id"])
    assert event["status"] == 400 and event["error_code"] == "policy_violation"
    assert event["decisions"] == [
        {"rule": "no-secrets", "action": "block", "stage": "input", "category": "default"}
    ]
    by_rule = event_for(
        server, masked["auditor"], response.headers["x-request-id"], rule="no-secrets"
    )
    assert by_rule["seq"] == event["seq"]


def test_hash_and_none_content_modes(server: RunningServer, admin_key: str) -> None:
    hashed = tenant_with(server, admin_key, "audit: {content: hash}\n")
    response = chat(server, hashed["developer"], "hello there")
    event = event_for(server, hashed["auditor"], response.headers["x-request-id"])
    expected = "sha256:" + hashlib.sha256(b"user: hello there").hexdigest()
    assert event["prompt"] == expected
    assert event["answer"] == "sha256:" + hashlib.sha256(b"hello there").hexdigest()
    silent = tenant_with(server, admin_key, "audit: {content: none}\n")
    response = chat(server, silent["developer"], "hello there")
    event = event_for(server, silent["auditor"], response.headers["x-request-id"])
    assert event["prompt"] is None and event["answer"] is None


def test_a_bad_key_and_an_admin_action_are_audited(server: RunningServer, admin_key: str) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous:
        refused = anonymous.post(
            "/v1/chat/completions",
            headers={"Authorization": "Bearer sk-agl-not-a-real-key"},
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert refused.status_code == 401
    event = event_for(server, admin_key, refused.headers["x-request-id"], status=401)
    assert event["error_code"] == "invalid_api_key" and event["tenant_id"] is None
    assert event["key_id"] is None
    with client(server, admin_key) as platform:
        created = platform.post("/v1/admin/tenants", json={"name": f"x-{secrets.token_hex(3)}"})
    event = event_for(server, admin_key, created.headers["x-request-id"], kind="admin")
    assert event["action"] == "tenant.created" and event["status"] == 201
    assert event["detail"] == {"tenant_id": created.json()["id"], "name": created.json()["name"]}


def test_a_filtered_stream_is_audited_with_what_the_client_saw(
    server: RunningServer, admin_key: str
) -> None:
    policy = (
        "audit: {content: full}\n"
        "rules:\n  - id: out\n    type: words\n    words: [zebra]\n    apply_to: output\n"
    )
    tenant = tenant_with(server, admin_key, policy)
    body = {
        "model": "echo",
        "stream": True,
        "messages": [{"role": "user", "content": "one two zebra three"}],
    }
    with (
        client(server, tenant["developer"]) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        _ = list(response.iter_lines())
    event = event_for(server, tenant["auditor"], request_id)
    assert event["answer"] == "one two "
    assert event["detail"]["finish_reason"] == "content_filter"
    assert {"rule": "out", "action": "block", "stage": "output", "category": "default"} in event[
        "decisions"
    ]
    with client(server, tenant["auditor"]) as http:
        verified = http.get("/v1/audit/verify").json()
    assert verified["ok"] is True and verified["first_broken_seq"] is None
