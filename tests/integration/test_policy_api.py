"""Policies over HTTP: managed by API, enforced on input and output (whole and streamed),
OpenAI-shaped refusals, latency budgets, lockouts, and hot reload across replicas."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import echo_models, settings_for
from tests.support.openapi_spec import assert_valid
from tests.support.servers import RunningServer, start_server

CHAT_CHUNK = "CreateChatCompletionStreamResponse"
TENANT_POLICY = """\
lockout: {violations: 100, window_s: 600, suspend_s: 120}
rules:
  - id: no-gambling
    type: words
    words: ["赌博", "online casino"]
    category: gambling
    apply_to: input
  - id: out-words
    type: words
    words: ["机密", "darn"]
    action: block
    apply_to: output
  - id: phones
    type: pii
    kinds: [mobile, id_card]
    action: mask
  - id: no-broken
    type: models
    deny: ["echo-broken"]
  - id: cap
    type: max_tokens
    limit: 64
  - id: short-prompts
    type: max_prompt_tokens
    limit: 200
  - id: slow-budget
    type: latency_budget
    budget_ms: 300
    models: ["echo-slow"]
"""


def client(server: RunningServer, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.fixture(scope="module")
def tenant(server: RunningServer, admin_key: str) -> Iterator[dict[str, Any]]:
    """A tenant with its own policy, an admin key and a developer key."""
    with client(server, admin_key) as platform:
        created = platform.post(
            "/v1/admin/tenants", json={"name": f"pol-{secrets.token_hex(4)}"}
        ).json()
        admin = platform.post(
            "/v1/admin/keys", json={"tenant_id": created["id"], "role": "admin"}
        ).json()
    with client(server, admin["secret"]) as http:
        applied = http.put(f"/v1/admin/policies/{created['id']}", json={"document": TENANT_POLICY})
        assert applied.status_code == 201, applied.text
        developer = http.post("/v1/admin/keys", json={"role": "developer"}).json()
    yield {"id": created["id"], "admin": admin["secret"], "developer": developer["secret"]}


def chat(server: RunningServer, key: str, text: str, **extra: Any) -> httpx.Response:
    with client(server, key) as http:
        body = {"model": "echo", "messages": [{"role": "user", "content": text}], **extra}
        return http.post("/v1/chat/completions", json=body)


def stream_events(server: RunningServer, key: str, text: str, model: str = "echo") -> list[Any]:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
    events = []
    with client(server, key) as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def test_input_block_is_an_openai_error_naming_the_rule_not_the_word(
    server: RunningServer, tenant: dict[str, Any]
) -> None:
    response = chat(server, tenant["developer"], "我想了解一下 赌 博 的规则")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "policy_violation" and error["type"] == "invalid_request_error"
    assert error["rule"] == "no-gambling"
    assert error["message"] == "the request was blocked by policy rule 'no-gambling'"
    assert "赌" not in response.text


def test_pii_in_the_prompt_is_masked_before_the_model_sees_it(
    server: RunningServer, tenant: dict[str, Any]
) -> None:
    response = chat(server, tenant["developer"], "我的手机 13812345678 身份证 11010519491231002X")
    assert response.status_code == 200, response.text
    answer = response.json()["choices"][0]["message"]["content"]
    assert "13812345678" not in answer and "138****5678" in answer
    assert "11010519491231002X" not in answer


def test_output_block_ends_with_content_filter_whole_and_streamed(
    server: RunningServer, tenant: dict[str, Any]
) -> None:
    text = "first part is fine, then 机 密 words follow here"
    whole = chat(server, tenant["developer"], text)
    assert whole.status_code == 200
    choice = whole.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert "机" not in choice["message"]["content"]
    events = stream_events(server, tenant["developer"], text)
    for event in events:
        assert_valid(CHAT_CHUNK, event)
        assert "机" not in json.dumps(event, ensure_ascii=False)
    streamed = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]
    )
    assert streamed == choice["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_model_deny_list_and_prompt_size(server: RunningServer, tenant: dict[str, Any]) -> None:
    with client(server, tenant["developer"]) as http:
        denied = http.post(
            "/v1/chat/completions",
            json={"model": "echo-broken", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert denied.status_code == 400 and denied.json()["error"]["rule"] == "no-broken"
    long = chat(server, tenant["developer"], "word " * 400)
    assert long.status_code == 400 and long.json()["error"]["rule"] == "short-prompts"


def test_max_tokens_is_capped(server: RunningServer, tenant: dict[str, Any]) -> None:
    response = chat(server, tenant["developer"], "a " * 150, max_tokens=1000)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] <= 64


def test_latency_budget_gives_504_or_an_error_event(
    server: RunningServer, tenant: dict[str, Any]
) -> None:
    with client(server, tenant["developer"]) as http:
        started = time.monotonic()
        response = http.post(
            "/v1/chat/completions",
            json={"model": "echo-slow", "messages": [{"role": "user", "content": "w " * 60}]},
        )
        assert time.monotonic() - started < 3
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    events = stream_events(server, tenant["developer"], "w " * 60, model="echo-slow")
    assert events[-1]["error"]["code"] == "deadline_exceeded"


def test_policy_management_roles_and_validation(
    server: RunningServer, tenant: dict[str, Any], admin_key: str
) -> None:
    with client(server, tenant["admin"]) as http:
        bad = http.put(
            f"/v1/admin/policies/{tenant['id']}",
            json={"document": "rules:\n  - id: x\n    type: words\n    action: nuke\n"},
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_policy"
        assert "line 4" in bad.json()["error"]["message"]
        current = http.get(f"/v1/admin/policies/{tenant['id']}").json()
        assert current["version"] == 1 and current["document"] == TENANT_POLICY
        assert http.get("/v1/admin/policies/global").status_code == 403
        assert http.put("/v1/admin/policies/global", json={"document": ""}).status_code in (
            400,
            403,
        )
        tested = http.post(
            "/v1/admin/policies/test", json={"text": "call 13812345678", "stage": "output"}
        ).json()
        assert tested["text"] == "call 138****5678" and tested["blocked_by"] is None
        assert (
            tested["decisions"]
            == [{"rule": "phones", "action": "mask", "stage": "output", "category": "mobile"}]
            or tested["decisions"][0]["rule"] == "phones"
        )
    with client(server, tenant["developer"]) as http:
        assert http.get(f"/v1/admin/policies/{tenant['id']}").status_code == 403
    with client(server, admin_key) as platform:
        other = platform.post("/v1/admin/tenants", json={"name": f"o-{secrets.token_hex(3)}"})
    with client(server, tenant["admin"]) as http:
        assert http.get(f"/v1/admin/policies/{other.json()['id']}").status_code == 404


def test_repeated_violations_suspend_the_key(server: RunningServer, admin_key: str) -> None:
    with client(server, admin_key) as platform:
        created = platform.post("/v1/admin/tenants", json={"name": f"lk-{secrets.token_hex(3)}"})
        tenant_id = created.json()["id"]
        policy = (
            "lockout: {violations: 2, window_s: 600, suspend_s: 300}\n"
            "rules:\n  - id: bad\n    type: words\n    words: [forbidden]\n"
        )
        assert platform.put(f"/v1/admin/policies/{tenant_id}", json={"document": policy}).is_success
        key = platform.post("/v1/admin/keys", json={"tenant_id": tenant_id}).json()
    for _ in range(2):
        assert chat(server, key["secret"], "say forbidden").status_code == 400
    deadline = time.monotonic() + 5
    while (refused := chat(server, key["secret"], "hello")).status_code == 200:
        assert time.monotonic() < deadline, "key was not suspended"
        time.sleep(0.05)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "key_suspended"
    assert 200 <= int(refused.headers["Retry-After"]) <= 300
    with client(server, admin_key) as platform:
        listed = platform.get("/v1/admin/suspensions").json()["data"]
        assert key["id"] in [s["key_id"] for s in listed]
        assert platform.delete(f"/v1/admin/suspensions/{key['id']}").status_code == 200
    assert chat(server, key["secret"], "hello").status_code == 200


@pytest.fixture()
def replicas(tmp_path: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two servers on one database, reloading policies every 0.1 s."""
    settings = settings_for(tmp_path, echo_models(), policy={"reload_interval_s": 0.1})
    first = start_server(settings)
    second = start_server(settings)
    yield first, second
    second.stop()
    first.stop()


def test_a_policy_applied_on_one_replica_holds_on_the_other(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    first, second = replicas
    admin = first.admin_key
    policy = "rules:\n  - id: g\n    type: words\n    words: [zebra]\n    apply_to: input\n"
    assert chat(second, admin, "a zebra").status_code == 200
    with client(first, admin) as http:
        assert http.put("/v1/admin/policies/global", json={"document": policy}).status_code == 201
    deadline = time.monotonic() + 5
    while chat(second, admin, "a zebra").status_code == 200:
        assert time.monotonic() < deadline, "the second replica never reloaded"
        time.sleep(0.05)
    assert chat(second, admin, "a zebra").json()["error"]["rule"] == "g"
    with client(first, admin) as http:
        assert http.delete("/v1/admin/policies/global").status_code == 200
    deadline = time.monotonic() + 5
    while chat(second, admin, "a zebra").status_code != 200:
        assert time.monotonic() < deadline, "the withdrawal never reached the second replica"
        time.sleep(0.05)


def test_regions_and_embeddings_follow_the_policy(server: RunningServer, admin_key: str) -> None:
    policy = (
        "rules:\n"
        "  - {id: residency, type: regions, allow: [cn-north-1]}\n"
        "  - {id: no-secret, type: words, words: [topsecret], apply_to: input}\n"
        "  - {id: pii, type: pii, kinds: [mobile], action: mask}\n"
    )
    with client(server, admin_key) as platform:
        created = platform.post("/v1/admin/tenants", json={"name": f"rg-{secrets.token_hex(3)}"})
        tenant_id = created.json()["id"]
        assert platform.put(f"/v1/admin/policies/{tenant_id}", json={"document": policy}).is_success
        key = platform.post("/v1/admin/keys", json={"tenant_id": tenant_id}).json()["secret"]
    with client(server, key) as http:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        elsewhere = http.post("/v1/chat/completions", json={"model": "echo", **body})
        assert elsewhere.status_code == 403
        assert elsewhere.json()["error"]["code"] == "region_not_allowed"
        inside = http.post("/v1/chat/completions", json={"model": "echo-regional", **body})
        assert inside.status_code == 200
        refused = http.post("/v1/embeddings", json={"model": "echo-regional", "input": "topsecret"})
        assert refused.status_code == 400 and refused.json()["error"]["rule"] == "no-secret"
        plain = http.post(
            "/v1/embeddings", json={"model": "echo-regional", "input": "138 1234 5678"}
        )
        masked = http.post(
            "/v1/embeddings", json={"model": "echo-regional", "input": "138 **** 5678"}
        )
        assert plain.status_code == masked.status_code == 200
        assert plain.json()["data"][0]["embedding"] == masked.json()["data"][0]["embedding"]
