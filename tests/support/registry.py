"""Registry test helpers: keys for the four-eyes roles, and echo versions taken to deployment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.servers import RunningServer


@dataclass(frozen=True)
class Team:
    """An operator who submits, an approver, and an operator without the approve permission."""

    admin: httpx.Client
    submitter: httpx.Client
    approver: httpx.Client
    outsider: httpx.Client

    def close(self) -> None:
        for http in (self.admin, self.submitter, self.approver, self.outsider):
            http.close()


def http_client(server: RunningServer, secret: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )


def issue(admin: httpx.Client, name: str, **extra: Any) -> str:
    response = admin.post("/v1/admin/keys", json={"role": "operator", "name": name, **extra})
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


def team(server: RunningServer, admin_key: str | None = None) -> Team:
    admin = http_client(server, admin_key or server.admin_key)
    return Team(
        admin=admin,
        submitter=http_client(server, issue(admin, "submitter")),
        approver=http_client(server, issue(admin, "approver", permissions=["approve_models"])),
        outsider=http_client(server, issue(admin, "outsider")),
    )


def echo_version(reply: str, **settings: Any) -> list[dict[str, Any]]:
    return [{"backend": "echo", "reply": reply, **settings}]


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def register(people: Team, model: str, **extra: Any) -> None:
    ok(people.submitter.post("/v1/registry/models", json={"name": model, **extra}), 201)


def deploy(people: Team, model: str, version: str, instances: list[dict[str, Any]]) -> None:
    """Register ``version``, submit it (submitter) and approve it (approver)."""
    base = f"/v1/registry/models/{model}/versions"
    ok(people.submitter.post(base, json={"version": version, "instances": instances}), 201)
    ok(people.submitter.post(f"{base}/{version}/transitions", json={"to": "pending_approval"}))
    ok(people.approver.post(f"{base}/{version}/transitions", json={"to": "deployed"}))


def chat(http: httpx.Client, model: str, context_id: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if context_id is not None:
        body["context_id"] = context_id
    return http.post("/v1/chat/completions", json=body)
