"""The workflows API on a real server: the two examples end to end (an echo model, real HTTP
endpoints on 127.0.0.1), a signed webhook trigger, refusals, metrics and the cron state."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import settings_for
from tests.support.databases import database_url
from tests.support.servers import RunningServer, free_port, start_server, wait_until

from openautoglm.config.settings import ModelConfig
from openautoglm.registry.webhooks import sign
from openautoglm.store.database import open_database
from openautoglm.store.workflows_sql import SqlWorkflowStore

ROOT = Path(__file__).resolve().parents[2]
HOOK_SECRET = "hook-secret-0123456789"
SALES = {"north": 120, "south": 80, "east": 95}


class Endpoints:
    """A data source and a publish target on 127.0.0.1."""

    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []
        posted = self.posted

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(SALES).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                posted.append(
                    {
                        "path": self.path,
                        "key": self.headers.get("Idempotency-Key"),
                        "json": json.loads(self.rfile.read(length)),
                    }
                )
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def endpoints() -> Iterator[Endpoints]:
    running = Endpoints()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = settings_for(
        tmp_path_factory.mktemp("workflows"),
        [ModelConfig(name="glm-4", backend="echo")],
        workflows={
            "definitions_dir": str(ROOT / "examples"),
            "webhooks": [{"name": "crm", "workflow": "etl-classify", "secret": HOOK_SECRET}],
        },
    )
    running = start_server(settings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    client = httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=30,
    )
    yield client
    client.close()


def finished(http: httpx.Client, run_id: str) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def done() -> bool:
        state.update(http.get(f"/v1/runs/{run_id}").json())
        return state["state"] not in ("queued", "running")

    assert wait_until(done, timeout_s=30), state
    return state


def test_the_quarterly_sales_example_fetches_summarises_and_publishes(
    http: httpx.Client, endpoints: Endpoints
) -> None:
    listed = {w["name"] for w in http.get("/v1/workflows").json()["data"]}
    assert {"quarterly-sales", "etl-classify"} <= listed  # loaded from examples/ on start
    inputs = {
        "quarter": "2026-Q3",
        "source_url": f"{endpoints.url}/sales",
        "publish_url": f"{endpoints.url}/pages",
    }
    started = http.post("/v1/workflows/quarterly-sales/runs", json={"inputs": inputs})
    assert started.status_code == 201, started.text
    run = finished(http, started.json()["id"])
    assert run["state"] == "succeeded", run
    tasks = {t["task_id"]: t for t in run["tasks"]}
    assert tasks["fetch"]["output"]["json"] == SALES
    summary = tasks["summarise"]["output"]["text"]
    assert "2026-Q3" in summary and "north" in summary  # echo repeats the templated prompt
    assert tasks["check"]["output"] == {"chosen": ["publish"]}
    assert tasks["review"]["state"] == "skipped"
    published = [p for p in endpoints.posted if p["path"] == "/pages"]
    assert published[-1]["json"] == {"title": "Sales summary 2026-Q3", "body": summary}
    assert published[-1]["key"] == f"{run['id']}/publish"
    assert run["outputs"] == {"summary": summary, "published": True}
    graph = http.get("/v1/workflows/quarterly-sales/graph", params={"run_id": run["id"]}).text
    assert "flowchart TD" in graph and "succeeded" in graph and "skipped" in graph


def test_the_etl_example_maps_large_batches_through_the_llm(
    http: httpx.Client, endpoints: Endpoints
) -> None:
    records = ["refund please", "app crashes", "hello", "invoice wrong", "login bug"]
    inputs = {"records": records, "load_url": f"{endpoints.url}/load"}
    big = finished(
        http, http.post("/v1/workflows/etl-classify/runs", json={"inputs": inputs}).json()["id"]
    )
    assert big["state"] == "succeeded", big
    tasks = {t["task_id"]: t for t in big["tasks"]}
    assert tasks["passthrough"]["state"] == "skipped"
    labels = [item["text"] for item in tasks["classify"]["output"]]
    assert len(labels) == 5 and all(label.startswith("Classify this") for label in labels)
    assert {f"classify[{i}]" for i in range(5)} <= set(tasks)
    small = {"records": ["just one"], "load_url": f"{endpoints.url}/load"}
    run = finished(
        http, http.post("/v1/workflows/etl-classify/runs", json={"inputs": small}).json()["id"]
    )
    assert run["state"] == "succeeded", run
    loads = [p["json"] for p in endpoints.posted if p["path"] == "/load"]
    assert loads[-1] == {"records": ["just one"], "labels": ["just one"]}


def test_a_signed_webhook_starts_one_run_per_idempotency_key(
    http: httpx.Client, server: RunningServer, endpoints: Endpoints
) -> None:
    body = json.dumps({"records": ["a"], "load_url": f"{endpoints.url}/load"}).encode()
    signature = sign(HOOK_SECRET, body, int(time.time()))
    headers = {"X-AutoGLM-Signature": signature, "Idempotency-Key": "crm-event-42"}
    with httpx.Client(base_url=server.base_url) as anonymous:
        first = anonymous.post("/v1/workflows/hooks/crm", content=body, headers=headers)
        again = anonymous.post("/v1/workflows/hooks/crm", content=body, headers=headers)
        forged = anonymous.post(
            "/v1/workflows/hooks/crm",
            content=body,
            headers={"X-AutoGLM-Signature": sign("not-the-secret-123", body, int(time.time()))},
        )
        unknown = anonymous.post("/v1/workflows/hooks/nope", content=body, headers=headers)
    assert first.status_code == 202 and again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["trigger"] == "webhook:crm"
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "invalid_signature"
    assert unknown.status_code == 404
    assert finished(http, first.json()["id"])["state"] == "succeeded"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"document": {"name": "loop", "tasks": [
            {"id": "a", "type": "python", "callable": "m:f", "depends": ["c"]},
            {"id": "b", "type": "python", "callable": "m:f", "depends": ["a"]},
            {"id": "c", "type": "python", "callable": "m:f", "depends": ["b"]},
        ]}}, 400, "a → b → c → a"),
        ({"yaml": "name: x\ntasks: [\n"}, 400, "line"),
        ({"document": {"name": "dup", "tasks": [
            {"id": "a", "type": "python", "callable": "m:f"},
            {"id": "a", "type": "python", "callable": "m:f"},
        ]}}, 400, "'a'"),
        ({"document": {"name": "ghost", "tasks": [
            {"id": "a", "type": "python", "callable": "m:f", "depends": ["zzz"]},
        ]}}, 400, "zzz"),
    ],
)  # fmt: skip
def test_bad_definitions_are_refused_before_anything_runs(
    http: httpx.Client, body: dict[str, Any], status: int, needle: str
) -> None:
    response = http.post("/v1/workflows", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] and error["code"]


def test_bad_runs_are_refused(http: httpx.Client) -> None:
    missing = http.post("/v1/workflows/quarterly-sales/runs", json={"inputs": {}})
    assert missing.status_code == 400 and "quarter" in missing.json()["error"]["message"]
    unknown = http.post("/v1/workflows/nope/runs", json={})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "workflow_not_found"
    assert http.get("/v1/runs/run_nope").status_code == 404
    bad_priority = http.post("/v1/workflows/etl-classify/runs", json={"priority": 12})
    assert bad_priority.status_code == 400


def test_workflow_metrics_are_exported(http: httpx.Client) -> None:
    metrics = http.get("/metrics").text
    assert 'autoglm_workflow_tasks_total{state="succeeded",workflow="quarterly-sales"}' in metrics
    assert "autoglm_workflow_queue_wait_seconds_count" in metrics
    assert "autoglm_workflow_ready_tasks" in metrics


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_cron_state_never_moves_backwards(kind: str, tmp_path: Path) -> None:
    async def check() -> None:
        async with database_url(kind, tmp_path) as url:
            engine = await open_database(url)
            store = SqlWorkflowStore(engine)
            try:
                at = datetime(2026, 11, 25, 9, tzinfo=UTC)
                assert await store.last_fire("daily") is None
                await store.record_fire("daily", at)
                await store.record_fire("daily", at - timedelta(days=1))
                assert await store.last_fire("daily") == at
                await asyncio.gather(
                    *(store.record_fire("daily", at + timedelta(days=n)) for n in range(1, 5))
                )
                assert await store.last_fire("daily") == at + timedelta(days=4)
            finally:
                await store.close()
                await engine.dispose()

    asyncio.run(check())
