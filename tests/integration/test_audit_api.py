"""Audit API over HTTP: who sees which tenant's events, paging, export, verification."""

from __future__ import annotations

import csv
import io
import json
import secrets
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.servers import RunningServer, start_server

from openautoglm.audit.model import AuditRecord
from openautoglm.config.settings import ModelConfig, Settings

MODEL = "audit-test-model"


@pytest.fixture(scope="module")
def audit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("audit-server")
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{data_dir / 'test.db'}",
        models=[ModelConfig(name="echo", backend="echo")],
        audit={"flush_interval_s": 0.05},
    )
    running = start_server(settings)
    yield running
    running.stop()


def client(server: RunningServer, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.fixture(scope="module")
def platform(audit_server: RunningServer) -> Iterator[httpx.Client]:
    with client(audit_server, audit_server.admin_key) as http:
        yield http


def new_tenant(platform: httpx.Client) -> str:
    response = platform.post("/v1/admin/tenants", json={"name": f"t-{secrets.token_hex(4)}"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def new_key(platform: httpx.Client, tenant_id: str, role: str) -> str:
    response = platform.post("/v1/admin/keys", json={"tenant_id": tenant_id, "role": role})
    assert response.status_code == 201, response.text
    return str(response.json()["secret"])


def inject(server: RunningServer, records: list[AuditRecord]) -> None:
    """Hand records to the server's audit log on its own loop and wait until written."""

    async def record_all() -> None:
        audit = server.services.audit
        assert audit is not None
        for record in records:
            audit.record(record)
        await audit.flush()

    server.call(record_all())


def record(tenant_id: str, n: int, **changes: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "request_id": f"req_{tenant_id}_{n}",
        "occurred_at": datetime.now(UTC),
        "kind": "request",
        "endpoint": "POST /v1/chat/completions",
        "status": 200,
        "tenant_id": tenant_id,
        "key_id": f"key_{tenant_id}",
        "model": MODEL,
        "stages": {"auth": 0.2, "backend": 3.5},
        "prompt": f"prompt {n} of {tenant_id}",
        "answer": "ok",
    }
    fields.update(changes)
    return AuditRecord(**fields)


@pytest.fixture(scope="module")
def tenants(audit_server: RunningServer, platform: httpx.Client) -> dict[str, dict[str, str]]:
    """Two tenants with a key of every role and some events each."""
    found: dict[str, dict[str, str]] = {}
    for name in ("a", "b"):
        tenant_id = new_tenant(platform)
        keys = {role: new_key(platform, tenant_id, role) for role in ("auditor", "admin")}
        keys.update(
            {role: new_key(platform, tenant_id, role) for role in ("developer", "operator")}
        )
        found[name] = {"id": tenant_id, **keys}
    a, b = found["a"]["id"], found["b"]["id"]
    inject(
        audit_server,
        [record(a, i) for i in range(57)]
        + [record(b, i) for i in range(5)]
        + [
            record(
                a,
                100,
                status=403,
                error_code="policy_blocked",
                decisions=[{"rule": "pii.id_card", "action": "block", "stage": "input"}],
            ),
            record(
                b,
                100,
                kind="admin",
                action="key.created",
                model=None,
                endpoint="POST /v1/admin/keys",
            ),
        ],
    )
    return found


def events(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get("/v1/audit/events", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_auditors_see_only_their_own_tenant(
    audit_server: RunningServer, tenants: dict[str, dict[str, str]]
) -> None:
    a, b = tenants["a"], tenants["b"]
    for role in ("auditor", "admin"):
        with client(audit_server, a[role]) as http:
            listed = events(http, limit=1000)
            assert listed["object"] == "list" and listed["data"]
            assert {e["tenant_id"] for e in listed["data"]} == {a["id"]}
            assert len([e for e in listed["data"] if e["model"] == MODEL]) == 58
            assert (
                events(http, tenant_id=a["id"], model=MODEL, limit=1)["data"][0]["tenant_id"]
                == a["id"]
            )
            other = http.get("/v1/audit/events", params={"tenant_id": b["id"]})
            assert other.status_code == 404
            assert other.json()["error"]["code"] == "tenant_not_found"
            assert http.get("/v1/audit/export", params={"tenant_id": b["id"]}).status_code == 404
    with client(audit_server, b["auditor"]) as http:
        seen = events(http, model=MODEL, limit=1000)["data"]
        assert len(seen) == 5 and all(e["prompt"].endswith(b["id"]) for e in seen)


def test_platform_admins_see_every_tenant(
    platform: httpx.Client, tenants: dict[str, dict[str, str]]
) -> None:
    a, b = tenants["a"]["id"], tenants["b"]["id"]
    everything = events(platform, model=MODEL, limit=1000)["data"]
    assert {a, b} <= {e["tenant_id"] for e in everything}
    only_b = events(platform, tenant_id=b, model=MODEL)["data"]
    assert len(only_b) == 5 and {e["tenant_id"] for e in only_b} == {b}


def test_developers_and_operators_are_refused(
    audit_server: RunningServer, tenants: dict[str, dict[str, str]]
) -> None:
    for role in ("developer", "operator"):
        with client(audit_server, tenants["a"][role]) as http:
            for path in ("/v1/audit/events", "/v1/audit/export", "/v1/audit/verify"):
                response = http.get(path)
                assert response.status_code == 403, (role, path)
                assert response.json()["error"]["code"] == "role_forbidden"
    assert httpx.get(f"{audit_server.base_url}/v1/audit/events").status_code == 401


def test_an_event_shows_every_field(
    audit_server: RunningServer, tenants: dict[str, dict[str, str]]
) -> None:
    with client(audit_server, tenants["a"]["auditor"]) as http:
        blocked = events(http, rule="pii.id_card")["data"]
    assert len(blocked) == 1
    event = blocked[0]
    assert event["object"] == "audit.event" and event["status"] == 403
    assert event["decisions"] == [{"rule": "pii.id_card", "action": "block", "stage": "input"}]
    assert event["stages"] == {"auth": 0.2, "backend": 3.5}
    assert event["occurred_at"].endswith("Z") and len(event["hash"]) == 64
    assert (
        event["error_code"] == "policy_blocked"
        and event["request_id"] == f"req_{tenants['a']['id']}_100"
    )


def test_filters_over_http(platform: httpx.Client, tenants: dict[str, dict[str, str]]) -> None:
    a, b = tenants["a"]["id"], tenants["b"]["id"]
    admin = events(platform, tenant_id=b, kind="admin", key_id=f"key_{b}")["data"]
    assert [e["action"] for e in admin] == ["key.created"]
    assert len(events(platform, tenant_id=a, status=403, model=MODEL)["data"]) == 1
    assert len(events(platform, key_id=f"key_{b}", limit=1000)["data"]) == 6
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert events(platform, since=later)["data"] == []
    assert len(events(platform, until=later, tenant_id=b, model=MODEL)["data"]) == 5


def test_cursor_pages_have_no_repeats_or_gaps(
    audit_server: RunningServer, tenants: dict[str, dict[str, str]]
) -> None:
    with client(audit_server, tenants["a"]["auditor"]) as http:
        everything = [e["seq"] for e in events(http, model=MODEL, limit=1000)["data"]]
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"model": MODEL, "limit": 10}
            if cursor:
                params["cursor"] = cursor
            page = events(http, **params)
            seen += [e["seq"] for e in page["data"]]
            pages += 1
            assert page["has_more"] == (page["next_cursor"] is not None)
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
    assert pages == 6 and len(seen) == 58
    assert seen == everything == sorted(everything, reverse=True)
    assert len(set(seen)) == 58


def test_bad_parameters_are_400(platform: httpx.Client) -> None:
    for params, code in (
        ({"cursor": "garbage!"}, "invalid_cursor"),
        ({"limit": 1001}, None),
        ({"limit": 0}, None),
        ({"kind": "other"}, None),
    ):
        response = platform.get("/v1/audit/events", params=params)
        assert response.status_code == 400, params
        if code is not None:
            assert response.json()["error"]["code"] == code
    assert platform.get("/v1/audit/export", params={"format": "xml"}).status_code == 400


def test_jsonl_export(audit_server: RunningServer, tenants: dict[str, dict[str, str]]) -> None:
    with client(audit_server, tenants["b"]["auditor"]) as http:
        response = http.get("/v1/audit/export", params={"format": "jsonl"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert 'filename="audit.jsonl"' in response.headers["content-disposition"]
    lines = [json.loads(line) for line in response.text.splitlines()]
    ours = [e for e in lines if e["model"] == MODEL]
    assert [e["prompt"] for e in ours] == [f"prompt {i} of {tenants['b']['id']}" for i in range(5)]
    assert {e["tenant_id"] for e in lines} == {tenants["b"]["id"]}
    seqs = [e["seq"] for e in lines]
    assert seqs == sorted(seqs)  # oldest first


def test_csv_export(audit_server: RunningServer, tenants: dict[str, dict[str, str]]) -> None:
    with client(audit_server, tenants["a"]["admin"]) as http:
        response = http.get("/v1/audit/export", params={"format": "csv", "model": MODEL})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 58
    assert [int(r["seq"]) for r in rows] == sorted(int(r["seq"]) for r in rows)
    assert json.loads(rows[0]["stages"]) == {"auth": 0.2, "backend": 3.5}
    blocked = [r for r in rows if r["status"] == "403"]
    assert json.loads(blocked[0]["decisions"])[0]["rule"] == "pii.id_card"
    assert rows[0]["usage"] == "" and rows[0]["tenant_id"] == tenants["a"]["id"]


def test_verify(audit_server: RunningServer, tenants: dict[str, dict[str, str]]) -> None:
    async def checkpoint() -> None:
        assert audit_server.services.audit is not None
        await audit_server.services.audit.flush()
        await audit_server.services.audit.checkpoint()

    audit_server.call(checkpoint())
    with client(audit_server, tenants["a"]["auditor"]) as http:
        response = http.get("/v1/audit/verify")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is True and report["first_broken_seq"] is None and report["reason"] is None
    assert report["checked"] >= 64 and report["checkpoints"] >= 1
    assert set(report) == {
        "object",
        "ok",
        "checked",
        "first_broken_seq",
        "reason",
        "checkpoints",
        "first_seq",
        "last_seq",
    }


def test_the_signing_key_is_created_private(audit_server: RunningServer) -> None:
    key_file = Path(audit_server.settings.data_dir) / "audit_signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_with_auditing_off_the_api_says_so(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'test.db'}",
        models=[ModelConfig(name="echo", backend="echo")],
        audit={"enabled": False},
    )
    running = start_server(settings)
    try:
        assert running.services.audit is None
        with client(running, running.admin_key) as http:
            response = http.get("/v1/audit/events")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "audit_disabled"
        assert not (tmp_path / "audit_signing.key").exists()
    finally:
        running.stop()
