"""The registry API on a real server: versions and lifecycle, validation runs through the
gateway (every scorer, a judge model, gates, automatic submission), comparisons, signed webhooks,
audit events, metrics by version, and refusals with OpenAI-style errors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import settings_for
from tests.support.registry import Team, chat, deploy, echo_version, ok, register, team
from tests.support.servers import RunningServer, free_port, start_server, wait_until

from openautoglm.config.settings import ModelConfig
from openautoglm.registry.webhooks import verify_signature

SECRET = "webhook-secret-0123456789"


class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps every delivery it gets."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        received = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.deliveries]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[RunningServer]:
    models = [
        ModelConfig(name="echo", backend="echo"),
        ModelConfig(name="judge-yes", backend="echo", reply="PASS\nit matches"),
    ]
    webhook = {"name": "ci", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret": SECRET}
    settings = settings_for(
        tmp_path_factory.mktemp("registry"),
        models,
        registry={"release_tick_s": 0.1, "reload_interval_s": 0.3, "webhooks": [webhook]},
    )
    running = start_server(settings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def people(server: RunningServer) -> Iterator[Team]:
    members = team(server)
    yield members
    members.close()


def wait_for_run(people: Team, run_id: str) -> dict[str, Any]:
    path = f"/v1/registry/validations/{run_id}"
    assert wait_until(lambda: ok(people.admin.get(path))["status"] != "running", timeout_s=30)
    final: dict[str, Any] = ok(people.admin.get(f"{path}?results=true"))
    return final


DATASET = [
    {"id": "capital", "prompt": "Capital of France?", "expected": "Paris", "scorer": "exact"},
    {"prompt": "首都？", "expected": "paris", "scorer": "contains"},
    {"prompt": "Say it", "expected": "^Par", "scorer": "regex"},
    {
        "prompt": "As JSON",
        "expected": {"type": "object", "required": ["city"]},
        "scorer": "json_schema",
    },
    {"prompt": "Judge me", "expected": "Paris, the capital", "scorer": "judge"},
]


def test_a_version_is_validated_through_the_gateway_and_submitted_when_its_gates_pass(
    people: Team, receiver: Receiver
) -> None:
    register(people, "geo", gates={"accuracy": ">= 0.8", "p99_latency_s": "<= 1"})
    base = "/v1/registry/models/geo/versions"
    ok(
        people.submitter.post(
            base,
            json={
                "version": "v1",
                "instances": echo_version('Paris {"city": "Paris"}'),
                "lineage": {"commit": "abc123", "pipeline_run": "ci-42"},
                "tags": {"team": "search"},
            },
        ),
        201,
    )
    started = ok(
        people.submitter.post(
            f"{base}/v1/validations", json={"dataset": DATASET, "judge_model": "judge-yes"}
        ),
        202,
    )
    assert started["status"] == "running" and started["total"] == 5
    run = wait_for_run(people, started["id"])
    # exact: 'Paris {...}' is not 'Paris'; json_schema: the answer is not JSON as a whole
    results = {item["id"]: item["passed"] for item in run["results"]}
    assert results == {"capital": False, "2": True, "3": True, "4": False, "5": True}
    assert run["metrics"]["accuracy"] == pytest.approx(0.6)
    assert run["metrics"]["error_rate"] == 0.0
    assert run["status"] == "failed"  # accuracy 0.6 < 0.8
    assert [g["passed"] for g in run["gate_results"]] == [False, True]
    assert ok(people.admin.get(f"{base}/v1"))["state"] == "development"

    ok(people.submitter.post(base, json={"version": "v2", "instances": echo_version("Paris")}), 201)
    items = [DATASET[0], DATASET[1], DATASET[2]]
    jsonl = "\n".join(json.dumps(item, ensure_ascii=False) for item in items)
    second = ok(people.submitter.post(f"{base}/v2/validations", json={"dataset_jsonl": jsonl}), 202)
    run = wait_for_run(people, second["id"])
    assert run["status"] == "passed" and run["metrics"]["accuracy"] == 1.0
    version = ok(people.admin.get(f"{base}/v2"))
    assert version["state"] == "pending_approval"
    assert version["submitted_by"] == run["created_by"]
    assert version["evaluation"]["accuracy"] == 1.0
    assert version["history"][-1]["reason"].startswith(f"validation {run['id']} passed")
    # The key that ran the validation submitted the version: it may not approve it too.
    approve = people.submitter.post(f"{base}/v2/transitions", json={"to": "deployed"})
    assert approve.status_code == 403

    comparison = ok(people.admin.get("/v1/registry/models/geo/compare?versions=v1,v2"))
    rows = {row["metric"]: row for row in comparison["rows"]}
    assert rows["accuracy"]["values"] == [pytest.approx(0.6), 1.0]
    assert rows["accuracy"]["best"] == 1
    assert comparison["same_dataset"] is False

    assert wait_until(
        lambda: any(e["event"] == "validation.finished" for e in receiver.events()), 10
    )


def test_transitions_fire_signed_webhooks_and_audit_events(
    server: RunningServer, people: Team, receiver: Receiver
) -> None:
    register(people, "hooked")
    deploy(people, "hooked", "v1", echo_version("one"))

    def transitions() -> list[dict[str, Any]]:
        return [
            e["data"]
            for e in receiver.events()
            if e["event"] == "version.transitioned" and e["data"]["model"] == "hooked"
        ]

    assert wait_until(lambda: len(transitions()) == 2, 10)
    assert [(t["from"], t["to"]) for t in transitions()] == [
        ("development", "pending_approval"),
        ("pending_approval", "deployed"),
    ]
    for headers, body in receiver.deliveries:
        assert verify_signature(SECRET, headers["x-autoglm-signature"], body, int(time.time()))
        assert not verify_signature(
            "another-secret-123456", headers["x-autoglm-signature"], body, int(time.time())
        )
    champion = [
        e["data"]
        for e in receiver.events()
        if e["event"] == "alias.moved" and e["data"]["model"] == "hooked"
    ]
    assert champion == [{"model": "hooked", "alias": "champion", "version": "v1"}]

    server.call(server.services.audit.flush())  # type: ignore[union-attr]
    events = ok(people.admin.get("/v1/audit/events", params={"model": "hooked", "limit": 100}))
    actions = [e.get("action") for e in events["data"]]
    assert actions.count("version.transitioned") == 2
    assert "alias.moved" in actions


def test_calls_to_a_version_are_labelled_in_metrics_and_audit(
    server: RunningServer, people: Team
) -> None:
    register(people, "labelled")
    deploy(people, "labelled", "v7", echo_version("seven"))
    for _ in range(3):
        response = chat(people.admin, "labelled")
        assert response.headers["x-autoglm-version"] == "v7"
    metrics = people.admin.get("/metrics").text
    assert (
        'autoglm_version_requests_total{model="labelled",outcome="ok",version="v7"} 3.0' in metrics
    )
    server.call(server.services.audit.flush())  # type: ignore[union-attr]
    events = ok(people.admin.get("/v1/audit/events", params={"model": "labelled", "limit": 100}))
    requests = [
        e
        for e in events["data"]
        if e["kind"] == "request" and e["endpoint"].endswith("completions")
    ]
    assert requests and all(e["version"] == "v7" for e in requests)


def test_registry_reads_hide_secrets_and_writes_need_an_operator(people: Team) -> None:
    register(people, "secretive")
    base = "/v1/registry/models/secretive/versions"
    instances = [{"backend": "openai", "base_url": "http://127.0.0.1:9", "api_key": "sk-hidden"}]
    created = ok(people.submitter.post(base, json={"version": "v1", "instances": instances}), 201)
    assert created["instances"][0]["api_key"] == "***"
    assert "sk-hidden" not in people.admin.get(f"{base}/v1").text
    developer = people.admin.post("/v1/admin/keys", json={"role": "developer"}).json()["secret"]
    headers = {"Authorization": f"Bearer {developer}"}
    assert people.admin.get(f"{base}", headers=headers).status_code == 200
    refused = people.admin.post(
        f"{base}/v1/transitions", json={"to": "pending_approval"}, headers=headers
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "role_forbidden"


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/registry/models", {"name": "bad name!"}, 400, "name"),
        ("/v1/registry/models", {"name": "x", "gates": {"accuracy": "~ 1"}}, 400, "gates"),
        ("/v1/registry/models", {"name": "x", "gates": {"vibes": ">= 1"}}, 400, "gates"),
        ("/v1/registry/models", {"name": "x", "thresholds": {"window_s": -1}}, 400, "thresholds"),
        ("/v1/registry/models/none/versions", {"version": "v1", "instances": [{}]}, 404, None),
        (
            "/v1/registry/models/refuse/versions",
            {"version": "v1", "instances": []},
            400,
            "instances",
        ),
        (
            "/v1/registry/models/refuse/versions",
            {"version": "v1", "instances": [{"backend": "warp"}]},
            400,
            "instances",
        ),
        (
            "/v1/registry/models/refuse/versions",
            {"version": "v 1", "instances": echo_version("x")},
            400,
            "version",
        ),
        ("/v1/registry/models/refuse/versions/v0/validations", {"dataset": []}, 400, "dataset"),
        (
            "/v1/registry/models/refuse/versions/v0/validations",
            {"dataset": [{"prompt": "a", "expected": "b"}]},
            404,
            None,
        ),
    ],
)
def test_bad_registry_input_is_refused_with_an_openai_style_error(
    people: Team, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    if people.admin.get("/v1/registry/models/refuse").status_code == 404:
        register(people, "refuse")
    response = people.submitter.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and error["code"]
    if param is not None:
        assert error["param"] == param


def test_bad_datasets_name_the_line(people: Team) -> None:
    if people.admin.get("/v1/registry/models/refuse").status_code == 404:
        register(people, "refuse")
    base = "/v1/registry/models/refuse/versions"
    if people.admin.get(f"{base}/d1").status_code == 404:
        ok(people.submitter.post(base, json={"version": "d1", "instances": echo_version("x")}), 201)
    jsonl = '{"prompt": "a", "expected": "b"}\n{"prompt": "a", "expected": "b", "scorer": "vibes"}'
    response = people.submitter.post(f"{base}/d1/validations", json={"dataset_jsonl": jsonl})
    assert response.status_code == 400
    assert "line 2" in response.json()["error"]["message"]
    judged = people.submitter.post(
        f"{base}/d1/validations",
        json={"dataset": [{"prompt": "a", "expected": "b", "scorer": "judge"}]},
    )
    assert judged.status_code == 400 and judged.json()["error"]["param"] == "judge_model"


def test_permissions_are_shown_on_keys_and_cannot_be_granted_by_those_without_them(
    people: Team, server: RunningServer, tmp_path: Path
) -> None:
    tenant_admin = ok(
        people.admin.post("/v1/admin/keys", json={"role": "admin", "name": "tenant admin"}), 201
    )
    assert tenant_admin["permissions"] == []
    headers = {"Authorization": f"Bearer {tenant_admin['secret']}"}
    refused = people.admin.post(
        "/v1/admin/keys",
        json={"role": "operator", "permissions": ["approve_models"]},
        headers=headers,
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_not_held"
    granted = ok(
        people.admin.post(
            "/v1/admin/keys", json={"role": "operator", "permissions": ["approve_models"]}
        ),
        201,
    )
    assert granted["permissions"] == ["approve_models"]
    unknown = people.admin.post("/v1/admin/keys", json={"permissions": ["rule_the_world"]})
    assert unknown.status_code == 400


def test_every_registry_and_release_endpoint_is_in_the_openapi_schema(people: Team) -> None:
    paths = ok(people.admin.get("/openapi.json"))["paths"]
    for path in (
        "/v1/registry/models",
        "/v1/registry/models/{name}/versions/{version}/transitions",
        "/v1/registry/models/{name}/versions/{version}/validations",
        "/v1/registry/models/{name}/compare",
        "/v1/registry/models/{name}/aliases",
        "/v1/registry/validations/{run_id}",
        "/v1/registry/webhooks/deliveries",
        "/v1/releases",
        "/v1/releases/{release_id}",
        "/v1/releases/{release_id}/rollback",
        "/v1/releases/{release_id}/promote",
    ):
        assert path in paths, path
