"""Failover over HTTP: three echo instances, one always failing; consistent hashing by
context; a fallback chain configured in YAML-shaped settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import settings_for
from tests.support.servers import RunningServer, start_server

from openautoglm.config.settings import ModelConfig


@pytest.fixture(scope="module")
def failover_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models = [
        ModelConfig.model_validate(
            {
                "name": "trio",
                "backend": "echo",
                "breaker": {"consecutive_failures": 3, "cooldown_s": 60},
                "instances": [{"name": "a"}, {"name": "b"}, {"name": "bad", "fail_rate": 1.0}],
            }
        ),
        ModelConfig.model_validate(
            {
                "name": "sticky",
                "backend": "echo",
                "balancer": "consistent_hash",
                "instances": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
            }
        ),
        ModelConfig.model_validate(
            {"name": "flaky", "backend": "echo", "fail_rate": 1.0, "fallbacks": ["trio"]}
        ),
    ]
    running = start_server(settings_for(tmp_path_factory.mktemp("failover"), models))
    yield running
    running.stop()


def client(server: RunningServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


def chat(http: httpx.Client, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return http.post("/v1/chat/completions", json=body)


def test_a_failing_instance_costs_no_client_errors(failover_server: RunningServer) -> None:
    with client(failover_server) as http:
        answers = [chat(http, "trio") for _ in range(150)]
        assert [r.status_code for r in answers] == [200] * 150
        served = {r.headers["x-autoglm-instance"] for r in answers}
        assert served == {"a", "b"}
        metrics = http.get("/metrics").text
    assert 'autoglm_instance_breaker_state{instance="bad",model="trio"} 2.0' in metrics
    assert 'autoglm_retries_total{model="trio",reason="backend"} 3.0' in metrics


def test_a_context_stays_on_one_instance(failover_server: RunningServer) -> None:
    with client(failover_server) as http:
        for index in range(8):
            headers = {"X-AutoGLM-Context-Id": f"conv-{index}"}
            body = {"model": "sticky", "messages": [{"role": "user", "content": "hi"}]}
            served = {
                http.post("/v1/chat/completions", json=body, headers=headers).headers[
                    "x-autoglm-instance"
                ]
                for _ in range(5)
            }
            assert len(served) == 1


def test_a_failing_model_falls_back(failover_server: RunningServer) -> None:
    with client(failover_server) as http:
        response = chat(http, "flaky")
        assert response.status_code == 200
        assert response.headers["x-autoglm-model"] == "trio"
        assert response.json()["choices"][0]["message"]["content"] == "hi"
        assert 'autoglm_fallbacks_total{fallback="trio",model="flaky"}' in http.get("/metrics").text


def test_instances_change_live_through_the_admin_api(failover_server: RunningServer) -> None:
    with client(failover_server) as http:
        listed = http.get("/v1/admin/models/trio").json()
        assert listed["balancer"] == "round_robin"
        states = {i["name"]: i["breaker"] for i in listed["instances"]}
        assert states["a"] == "closed"
        added = http.post("/v1/admin/models/sticky/instances", json={"name": "d"})
        assert added.status_code == 201 and added.json()["breaker"] == "closed"
        assert http.post("/v1/admin/models/sticky/instances", json={"name": "d"}).status_code == 409
        assert (
            http.post("/v1/admin/models/sticky/instances", json={"weight": -1}).status_code == 400
        )
        http.patch("/v1/admin/models/sticky/instances/a", json={"weight": 1000})
        served = [
            chat(http, "sticky").headers["x-autoglm-instance"] for _ in range(20)
        ]  # no context id: the weighted fallback
        assert served.count("a") >= 18
        removed = http.delete("/v1/admin/models/sticky/instances/d")
        assert removed.status_code == 200
        names = [i["name"] for i in http.get("/v1/admin/models/sticky").json()["instances"]]
        assert names == ["a", "b", "c"]
        assert http.delete("/v1/admin/models/flaky/instances/default").status_code == 409
        assert http.get("/v1/admin/models/nope").status_code == 404
        developer = http.post("/v1/admin/keys", json={"role": "developer"}).json()["secret"]
    with httpx.Client(
        base_url=failover_server.base_url, headers={"Authorization": f"Bearer {developer}"}
    ) as other:
        assert other.get("/v1/admin/models").status_code == 403


def test_the_scheduler_refuses_early_and_reports_itself(tmp_path: Path) -> None:
    models = [
        ModelConfig.model_validate(
            {
                "name": "narrow",
                "backend": "echo",
                "tokens_per_s": 20,  # 30 words: about 1.5 s per answer
                "max_concurrency": 1,
                "scheduler": {"max_queue": 1, "target_wait_s": 0.1, "max_replicas": 5},
            }
        )
    ]
    running = start_server(settings_for(tmp_path, models))
    try:
        body = {"model": "narrow", "messages": [{"role": "user", "content": "w " * 30}]}
        headers = {"Authorization": f"Bearer {running.admin_key}"}

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=running.base_url, headers=headers, timeout=30
            ) as http:
                first = asyncio.ensure_future(http.post("/v1/chat/completions", json=body))
                await asyncio.sleep(0.3)
                second = asyncio.ensure_future(http.post("/v1/chat/completions", json=body))
                await asyncio.sleep(0.3)
                started = time.monotonic()
                third = await http.post("/v1/chat/completions", json=body)
                assert time.monotonic() - started < 0.5  # refused at once, not after waiting
                snapshot = await http.get("/v1/admin/models/narrow")
                metrics = await http.get("/metrics")
                return [await first, await second, third, snapshot, metrics]

        first, second, third, snapshot, metrics = asyncio.run(burst())
        assert first.status_code == second.status_code == 200
        assert third.status_code == 503
        assert third.json()["error"]["code"] == "queue_full"
        assert int(third.headers["Retry-After"]) >= 1
        state = snapshot.json()
        assert state["scheduler"]["slots"] == 1 and state["scheduler"]["queue_depth"] == 1
        assert 2 <= state["desired_replicas"] <= 5
        assert 'autoglm_scheduler_rejected_total{model="narrow",reason="queue_full"} 1.0' in (
            metrics.text
        )
        assert 'autoglm_scheduler_slots{model="narrow"} 1.0' in metrics.text
    finally:
        running.stop()


def test_stage_latency_first_token_and_token_rate_are_exported(
    failover_server: RunningServer,
) -> None:
    with client(failover_server) as http:
        assert chat(http, "sticky").status_code == 200
        metrics = http.get("/metrics").text
    for stage in ("auth", "queue", "route", "context", "first_token", "generate"):
        assert f'autoglm_stage_duration_seconds_count{{stage="{stage}"}}' in metrics, stage
    assert 'autoglm_time_to_first_token_seconds_count{model="sticky"}' in metrics
    assert 'autoglm_completion_tokens_per_second_count{model="sticky"}' in metrics


def test_instance_changes_reach_other_replicas_and_survive_a_restart(tmp_path: Path) -> None:
    models = [
        ModelConfig.model_validate(
            {"name": "pool", "backend": "echo", "instances": [{"name": "a"}, {"name": "b"}]}
        )
    ]
    settings = settings_for(tmp_path, models)
    first, second = start_server(settings), start_server(settings)
    try:
        with client(first) as http:
            assert http.post("/v1/admin/models/pool/instances", json={"name": "c"}).is_success
            assert http.patch("/v1/admin/models/pool/instances/a", json={"weight": 7}).is_success
            assert http.delete("/v1/admin/models/pool/instances/b").is_success
        headers = {"Authorization": f"Bearer {first.admin_key}"}
        with httpx.Client(base_url=second.base_url, headers=headers, timeout=30) as other:
            deadline = time.monotonic() + 10
            while True:
                state = other.get("/v1/admin/models/pool").json()["instances"]
                if [(i["name"], i["weight"]) for i in state] == [("a", 7.0), ("c", 1.0)]:
                    break
                assert time.monotonic() < deadline, state
                time.sleep(0.1)
    finally:
        second.stop()
        first.stop()
    restarted = start_server(settings)
    try:
        headers = {"Authorization": f"Bearer {first.admin_key}"}
        with httpx.Client(base_url=restarted.base_url, headers=headers, timeout=30) as http:
            state = http.get("/v1/admin/models/pool").json()["instances"]
            assert [(i["name"], i["weight"]) for i in state] == [("a", 7.0), ("c", 1.0)]
            assert chat(http, "pool").status_code == 200
    finally:
        restarted.stop()
