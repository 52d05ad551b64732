"""Admin API over HTTP: tenants, keys, roles, revocation, rotation, tenant isolation."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.support.servers import RunningServer


def client(server: RunningServer, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.fixture(scope="module")
def platform(server: RunningServer, admin_key: str) -> Iterator[httpx.Client]:
    with client(server, admin_key) as http:
        yield http


def new_tenant(platform: httpx.Client, **body: Any) -> dict[str, Any]:
    response = platform.post(
        "/v1/admin/tenants", json={"name": f"team-{secrets.token_hex(4)}", **body}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def new_key(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/admin/keys", json=body)
    assert response.status_code == 201, response.text
    created = dict(response.json())
    assert created["secret"].startswith("sk-agl-") and created["prefix"] == created["secret"][:13]
    return created


def chat(server: RunningServer, key: str, model: str = "echo") -> httpx.Response:
    with client(server, key) as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )


def test_platform_admin_manages_tenants(platform: httpx.Client) -> None:
    tenant = new_tenant(platform, limits={"requests_per_minute": 100})
    assert tenant["object"] == "tenant" and tenant["limits"] == {"requests_per_minute": 100}
    assert not tenant["disabled"]
    listed = platform.get("/v1/admin/tenants").json()["data"]
    assert tenant["id"] in [t["id"] for t in listed]
    changed = platform.patch(f"/v1/admin/tenants/{tenant['id']}", json={"limits": None})
    assert changed.status_code == 200 and changed.json()["limits"] is None
    duplicate = platform.post("/v1/admin/tenants", json={"name": tenant["name"]})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "tenant_exists"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "ok", "limits": {"requests_per_minute": -1}}, "limits"),
        ({"name": "ok", "limits": {"bogus_limit": 1}}, "limits"),
        ({"name": "ok", "surprise": 1}, "surprise"),
    ],
)
def test_tenant_input_is_validated(
    platform: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = platform.post("/v1/admin/tenants", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and param in str(error["param"])


def test_roles_are_enforced(server: RunningServer, platform: httpx.Client) -> None:
    tenant = new_tenant(platform)
    admin = new_key(platform, tenant_id=tenant["id"], role="admin")
    with client(server, admin["secret"]) as tenant_admin:
        developer = new_key(tenant_admin, role="developer")
        assert developer["tenant_id"] == tenant["id"]
        refused = tenant_admin.post("/v1/admin/keys", json={"role": "platform_admin"})
        assert refused.status_code == 403
        assert tenant_admin.post("/v1/admin/tenants", json={"name": "x"}).status_code == 403
        assert [t["id"] for t in tenant_admin.get("/v1/admin/tenants").json()["data"]] == [
            tenant["id"]
        ]
    with client(server, developer["secret"]) as dev:
        response = dev.get("/v1/admin/keys")
        assert response.status_code == 403 and response.json()["error"]["code"] == "role_forbidden"
    auditor = new_key(platform, tenant_id=tenant["id"], role="auditor")
    refused_inference = chat(server, auditor["secret"])
    assert refused_inference.status_code == 403


def test_revoked_key_is_refused_on_the_next_request(
    server: RunningServer, platform: httpx.Client
) -> None:
    key = new_key(platform, role="developer")
    assert chat(server, key["secret"]).status_code == 200
    revoked = platform.post(f"/v1/admin/keys/{key['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    refused = chat(server, key["secret"])
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "inactive_api_key"


def test_rotation_replaces_the_key(server: RunningServer, platform: httpx.Client) -> None:
    key = new_key(
        platform, role="developer", allowed_models=["echo"], limits={"tokens_per_minute": 5000}
    )
    rotated = platform.post(f"/v1/admin/keys/{key['id']}/rotate")
    assert rotated.status_code == 201
    successor = rotated.json()
    assert successor["id"] != key["id"] and successor["allowed_models"] == ["echo"]
    assert successor["limits"] == {"tokens_per_minute": 5000}
    assert chat(server, key["secret"]).status_code == 401
    assert chat(server, successor["secret"]).status_code == 200
    with_grace = platform.post(f"/v1/admin/keys/{successor['id']}/rotate", json={"grace_s": 600})
    assert chat(server, successor["secret"]).status_code == 200
    assert chat(server, with_grace.json()["secret"]).status_code == 200


def test_allowed_models_hide_others(server: RunningServer, platform: httpx.Client) -> None:
    key = new_key(platform, role="developer", allowed_models=["echo"])
    with client(server, key["secret"]) as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["echo"]
    assert chat(server, key["secret"], model="echo-pool").status_code == 404


def test_disabled_tenant_is_refused(server: RunningServer, platform: httpx.Client) -> None:
    tenant = new_tenant(platform)
    key = new_key(platform, tenant_id=tenant["id"], role="developer")
    assert chat(server, key["secret"]).status_code == 200
    platform.patch(f"/v1/admin/tenants/{tenant['id']}", json={"disabled": True})
    refused = chat(server, key["secret"])
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "tenant_disabled"
    platform.patch(f"/v1/admin/tenants/{tenant['id']}", json={"disabled": False})
    assert chat(server, key["secret"]).status_code == 200


def test_tenants_cannot_reach_each_others_keys_or_tenant(
    server: RunningServer, platform: httpx.Client
) -> None:
    """OWASP API1: every tenant-scoped admin object of A is 404 to B, for every verb."""
    a, b = new_tenant(platform), new_tenant(platform)
    a_admin = new_key(platform, tenant_id=a["id"], role="admin")
    b_admin = new_key(platform, tenant_id=b["id"], role="admin")
    with client(server, a_admin["secret"]) as http_a:
        a_key = new_key(http_a, role="developer")
    with client(server, b_admin["secret"]) as http_b:
        attempts = [
            http_b.get(f"/v1/admin/tenants/{a['id']}"),
            http_b.patch(f"/v1/admin/tenants/{a['id']}", json={"disabled": True}),
            http_b.get(f"/v1/admin/keys/{a_key['id']}"),
            http_b.get(f"/v1/admin/keys/{a_key['id']}", params={"tenant_id": a["id"]}),
            http_b.get("/v1/admin/keys", params={"tenant_id": a["id"]}),
            http_b.post(f"/v1/admin/keys/{a_key['id']}/revoke"),
            http_b.post(f"/v1/admin/keys/{a_key['id']}/revoke", params={"tenant_id": a["id"]}),
            http_b.post(f"/v1/admin/keys/{a_key['id']}/rotate", params={"tenant_id": a["id"]}),
            http_b.delete(f"/v1/admin/keys/{a_key['id']}", params={"tenant_id": a["id"]}),
            http_b.post("/v1/admin/keys", json={"tenant_id": a["id"], "role": "developer"}),
        ]
        statuses = [r.status_code for r in attempts]
        # PATCH on a tenant is a platform-admin action: refused by role before any lookup.
        assert statuses == [404, 403, 404, 404, 404, 404, 404, 404, 404, 404]
        assert a_key["id"] not in [k["id"] for k in http_b.get("/v1/admin/keys").json()["data"]]
    assert chat(server, a_key["secret"]).status_code == 200, "A's key must be untouched"


def test_keys_are_pinned_to_their_regions(server: RunningServer, platform: httpx.Client) -> None:
    east = new_key(platform, role="developer", allowed_regions=["cn-east-2"])
    refused = chat(server, east["secret"], model="echo-regional")  # served only in cn-north-1
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "region_not_allowed"
    assert chat(server, east["secret"], model="echo").status_code == 200  # no region: open to all
    north = new_key(platform, role="developer", allowed_regions=["cn-north-1"])
    assert chat(server, north["secret"], model="echo-regional").status_code == 200


def test_embeddings_count_against_limits_and_roles(
    server: RunningServer, platform: httpx.Client
) -> None:
    key = new_key(platform, role="developer", limits={"requests_per_minute": 2})
    auditor = new_key(platform, role="auditor")
    body = {"model": "echo", "input": ["a", "b"]}
    with client(server, key["secret"]) as http:
        statuses = [http.post("/v1/embeddings", json=body).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    with client(server, auditor["secret"]) as http:
        assert http.post("/v1/embeddings", json=body).status_code == 403
