"""Canary releases end to end on a real server: echo versions, live analysis, automatic
rollback, promotion through every step, sticky conversations, restarts, header overrides."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.conftest import settings_for
from tests.support.registry import Team, chat, deploy, echo_version, ok, register, team
from tests.support.servers import RunningServer, start_server

from openautoglm.config.settings import ModelConfig, Settings

FAST = {"release_tick_s": 0.1, "reload_interval_s": 0.3}


def release_settings(data_dir: Path) -> Settings:
    return settings_for(data_dir, [ModelConfig(name="echo", backend="echo")], registry=FAST)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(release_settings(tmp_path_factory.mktemp("releases")))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def people(server: RunningServer) -> Iterator[Team]:
    members = team(server)
    yield members
    members.close()


def start_release(people: Team, model: str, candidate: str, **body: Any) -> dict[str, Any]:
    payload = {"model": model, "candidate": candidate, **body}
    release: dict[str, Any] = ok(people.submitter.post("/v1/releases", json=payload), 201)
    return release


def release_state(people: Team, release_id: str) -> dict[str, Any]:
    state: dict[str, Any] = ok(people.admin.get(f"/v1/releases/{release_id}"))
    return state


def test_a_failing_candidate_is_rolled_back_and_clients_see_errors_only_from_its_share(
    server: RunningServer, people: Team
) -> None:
    register(people, "bad-canary")
    deploy(people, "bad-canary", "v1", echo_version("stable answer"))
    deploy(people, "bad-canary", "v2", echo_version("candidate", fail_rate=0.2, seed=5))
    release = start_release(
        people,
        "bad-canary",
        "v2",
        steps=[10, 50, 100],
        interval_s=600,
        thresholds={"min_requests": 10},
    )
    assert release["weight"] == 10.0

    outcomes: list[tuple[float, int, str | None]] = []
    rolled_back_at: float | None = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = chat(people.admin, "bad-canary")
        outcomes.append(
            (time.monotonic(), response.status_code, response.headers.get("x-autoglm-version"))
        )
        checking = rolled_back_at is None and len(outcomes) % 10 == 0
        if checking and release_state(people, release["id"])["state"] == "rolled_back":
            rolled_back_at = time.monotonic()
        if rolled_back_at is not None and time.monotonic() - rolled_back_at > 1.0:
            break
    assert rolled_back_at is not None, "the release was never rolled back"

    final = release_state(people, release["id"])
    assert final["state"] == "rolled_back"
    assert final["reason"].startswith("analysis failed: error rate")
    assert final["weight"] == 0.0
    errors = [o for o in outcomes if o[1] != 200]
    assert {version for _, _, version in errors} == {"v2"}  # error answers name the version too
    served = Counter(version for _, status, version in outcomes if status == 200)
    assert errors, "the candidate's injected failures never reached a client"
    assert all(at <= rolled_back_at for at, _, _ in errors)
    # Failures only from the candidate's share: far fewer than 20% of all requests.
    assert len(errors) <= served["v2"] + len(errors) < len(outcomes) * 0.25
    after = [o for o in outcomes if o[0] > rolled_back_at]
    assert after and all(status == 200 and version == "v1" for _, status, version in after)
    version = ok(people.admin.get("/v1/registry/models/bad-canary/versions/v2"))
    assert version["state"] == "needs_iteration"
    assert version["history"][-1]["actor"] == "release-controller"
    assert version["history"][-1]["reason"] == final["reason"]
    server.call(server.services.audit.flush())  # type: ignore[union-attr]
    query = {"model": "bad-canary", "limit": 1000}
    admin_events = ok(people.admin.get("/v1/audit/events", params={**query, "kind": "admin"}))
    actions = {e.get("action"): e for e in admin_events["data"]}
    assert actions["release.rolled_back"]["key_id"] == "release-controller"
    assert actions["release.rolled_back"]["detail"]["reason"] == final["reason"]
    failed = ok(people.admin.get("/v1/audit/events", params={**query, "status": 500}))["data"]
    assert len(failed) == len(errors) and {e["version"] for e in failed} == {"v2"}
    assert ok(people.admin.get("/v1/registry/models/bad-canary/aliases")) == {"champion": "v1"}


def test_a_healthy_candidate_is_promoted_through_every_step_and_becomes_stable(
    server: RunningServer, people: Team
) -> None:
    register(people, "good-canary")
    deploy(people, "good-canary", "v1", echo_version("old"))
    deploy(people, "good-canary", "v2", echo_version("new"))
    release = start_release(
        people,
        "good-canary",
        "v2",
        steps=[20, 50, 100],
        interval_s=1,
        thresholds={"min_requests": 3},
    )
    weights_seen: set[float] = set()
    deadline = time.monotonic() + 60
    state = release
    while time.monotonic() < deadline and state["state"] == "running":
        for _ in range(10):
            assert chat(people.admin, "good-canary").status_code == 200
        state = release_state(people, release["id"])
        weights_seen.add(state["weight"])
    assert state["state"] == "promoted", state
    assert {20.0, 50.0} <= weights_seen | {20.0}  # the first step is set at start
    assert 50.0 in weights_seen or 100.0 in weights_seen
    assert ok(people.admin.get("/v1/registry/models/good-canary/aliases")) == {"champion": "v2"}
    assert ok(people.admin.get("/v1/registry/models/good-canary/versions/v2"))["state"] == (
        "deployed"
    )
    versions = {chat(people.admin, "good-canary").headers["x-autoglm-version"] for _ in range(20)}
    assert versions == {"v2"}


def test_every_request_of_a_conversation_stays_on_one_version(
    server: RunningServer, people: Team
) -> None:
    register(people, "sticky")
    deploy(people, "sticky", "v1", echo_version("one"))
    deploy(people, "sticky", "v2", echo_version("two"))
    start_release(people, "sticky", "v2", steps=[50, 100], interval_s=3600)
    seen: dict[str, set[str]] = {}
    for round_ in range(4):
        for n in range(30):
            context = f"conversation-{n}"
            response = chat(people.admin, "sticky", context_id=context)
            assert response.status_code == 200, (round_, response.text)
            seen.setdefault(context, set()).add(response.headers["x-autoglm-version"])
    assert all(len(versions) == 1 for versions in seen.values()), seen
    assert {v for versions in seen.values() for v in versions} == {"v1", "v2"}


def test_the_version_header_pins_a_call_and_an_unknown_version_is_refused(
    server: RunningServer, people: Team
) -> None:
    register(people, "ab-test")
    deploy(people, "ab-test", "v1", echo_version("A"))
    deploy(people, "ab-test", "v2", echo_version("B"))
    start_release(people, "ab-test", "v2", steps=[10, 100], interval_s=3600)
    client = openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key=people.admin.headers["authorization"][7:]
    )
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model="ab-test",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-AutoGLM-Version": "v2"},
        )
        assert raw.headers["x-autoglm-version"] == "v2"
        assert raw.parse().choices[0].message.content == "B"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="ab-test",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-AutoGLM-Version": "v9"},
        )
    assert refused.value.code == "version_not_serving"
    assert "v1" in refused.value.message and "v2" in refused.value.message


def test_four_eyes_refuses_self_approval_and_approvers_without_the_permission(
    server: RunningServer, people: Team
) -> None:
    register(people, "four-eyes")
    base = "/v1/registry/models/four-eyes/versions"
    ok(people.approver.post(base, json={"version": "v1", "instances": echo_version("x")}), 201)
    ok(people.approver.post(f"{base}/v1/transitions", json={"to": "pending_approval"}))
    own = people.approver.post(f"{base}/v1/transitions", json={"to": "deployed"})
    assert own.status_code == 403
    assert own.json()["error"]["code"] == "four_eyes_required"
    outsider = people.outsider.post(f"{base}/v1/transitions", json={"to": "deployed"})
    assert outsider.status_code == 403
    assert outsider.json()["error"]["code"] == "approver_required"
    rejected = people.submitter.post(f"{base}/v1/transitions", json={"to": "development"})
    assert rejected.status_code == 400 and rejected.json()["error"]["param"] == "reason"
    ok(people.admin.post(f"{base}/v1/transitions", json={"to": "deployed"}))  # another approver
    assert ok(people.admin.get(f"{base}/v1"))["state"] == "deployed"
    skipping = people.submitter.post(f"{base}/v1/transitions", json={"to": "archived"})
    assert skipping.status_code == 409
    assert skipping.json()["error"]["code"] == "invalid_state_transition"
    assert "allowed: deprecated, monitoring, needs_iteration" in skipping.json()["error"]["message"]


def test_manual_controls_pause_resume_abort_and_rollback_after_promotion(
    server: RunningServer, people: Team
) -> None:
    register(people, "manual")
    deploy(people, "manual", "v1", echo_version("one"))
    deploy(people, "manual", "v2", echo_version("two"))
    release = start_release(people, "manual", "v2", steps=[25, 100], interval_s=3600)
    rid = release["id"]
    assert ok(people.submitter.post(f"/v1/releases/{rid}/pause"))["state"] == "paused"
    assert people.submitter.post(f"/v1/releases/{rid}/pause").status_code == 409
    assert ok(people.submitter.post(f"/v1/releases/{rid}/resume"))["state"] == "running"
    second = people.submitter.post("/v1/releases", json={"model": "manual", "candidate": "v2"})
    assert second.status_code == 409 and second.json()["error"]["code"] == "release_active"
    promoted = ok(people.submitter.post(f"/v1/releases/{rid}/promote"))
    assert promoted["state"] == "promoted"
    assert {chat(people.admin, "manual").headers["x-autoglm-version"] for _ in range(10)} == {"v2"}
    back = ok(people.submitter.post(f"/v1/releases/{rid}/rollback", json={"reason": "complaints"}))
    assert back["state"] == "rolled_back" and back["reason"] == "complaints"
    assert {chat(people.admin, "manual").headers["x-autoglm-version"] for _ in range(10)} == {"v1"}
    assert ok(people.admin.get("/v1/registry/models/manual/versions/v2"))["state"] == (
        "needs_iteration"
    )
    deploy(people, "manual", "v3", echo_version("three"))
    third = start_release(people, "manual", "v3", steps=[50, 100], interval_s=3600)
    aborted = ok(people.submitter.post(f"/v1/releases/{third['id']}/abort"))
    assert aborted["state"] == "aborted"
    assert ok(people.admin.get("/v1/registry/models/manual/versions/v3"))["state"] == "deployed"
    assert {chat(people.admin, "manual").headers["x-autoglm-version"] for _ in range(10)} == {"v1"}


def test_bad_release_requests_are_refused_with_clear_errors(people: Team) -> None:
    register(people, "refusals")
    deploy(people, "refusals", "v1", echo_version("one"))
    base = "/v1/registry/models/refusals/versions"
    ok(people.submitter.post(base, json={"version": "v2", "instances": echo_version("x")}), 201)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"model": "refusals", "candidate": "v2"}, 409, "version_not_deployed"),
        ({"model": "refusals", "candidate": "v1"}, 409, "conflict"),
        ({"model": "nope", "candidate": "v1"}, 404, "model_not_registered"),
        ({"model": "refusals", "candidate": "v2", "steps": [50, 10]}, 400, "steps"),
        ({"model": "refusals", "candidate": "v2", "steps": [10, 50]}, 400, "steps"),
        (
            {"model": "refusals", "candidate": "v2", "thresholds": {"max_error_rate": 2}},
            400,
            "thresholds",
        ),
        ({"model": "refusals", "candidate": "v2", "thresholds": {"typo": 1}}, 400, "thresholds"),
        ({"model": "refusals", "candidate": "v2", "interval_s": 0}, 400, "interval_s"),
    ]
    for body, status, code_or_param in cases:
        response = people.submitter.post("/v1/releases", json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "code"}
        assert code_or_param in (error["code"], error.get("param")), (body, error)
    readonly = people.admin.post(
        "/v1/admin/keys", json={"role": "developer", "name": "dev"}
    ).json()["secret"]
    with httpx.Client(
        base_url=str(people.admin.base_url), headers={"Authorization": f"Bearer {readonly}"}
    ) as developer:
        refused = developer.post("/v1/releases", json={"model": "refusals", "candidate": "v1"})
        assert refused.status_code == 403


def test_a_release_survives_a_restart(tmp_path: Path) -> None:
    first = start_server(release_settings(tmp_path))
    admin_key = first.admin_key
    people = team(first)
    try:
        register(people, "durable")
        deploy(people, "durable", "v1", echo_version("one"))
        deploy(people, "durable", "v2", echo_version("two"))
        release = start_release(people, "durable", "v2", steps=[50, 100], interval_s=3600)
        pinned = {
            n: chat(people.admin, "durable", f"c{n}").headers["x-autoglm-version"]
            for n in range(20)
        }
    finally:
        people.close()
        first.stop()
    second = start_server(release_settings(tmp_path))
    try:
        with httpx.Client(
            base_url=second.base_url, headers={"Authorization": f"Bearer {admin_key}"}
        ) as admin:
            state = ok(admin.get(f"/v1/releases/{release['id']}"))
            assert state["state"] == "running" and state["weight"] == 50.0
            again = {
                n: chat(admin, "durable", f"c{n}").headers["x-autoglm-version"] for n in range(20)
            }
            assert again == pinned  # the first assignment is a hash of release and context
            assert set(again.values()) == {"v1", "v2"}
    finally:
        second.stop()


def test_shadow_traffic_judges_a_candidate_that_no_client_ever_sees(
    server: RunningServer, people: Team
) -> None:
    register(people, "shadowed")
    deploy(people, "shadowed", "v1", echo_version("live"))
    deploy(people, "shadowed", "v2", echo_version("shadow", fail_rate=1.0))
    release = start_release(
        people,
        "shadowed",
        "v2",
        steps=[10, 100],
        interval_s=3600,
        shadow=True,
        thresholds={"min_requests": 10},
    )
    assert (release["step"], release["weight"]) == (-1, 0.0)
    statuses: Counter[tuple[int, str | None]] = Counter()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for _ in range(10):
            response = chat(people.admin, "shadowed")
            statuses[(response.status_code, response.headers.get("x-autoglm-version"))] += 1
        # a conversation is never copied: its next turn would see a different history
        assert chat(people.admin, "shadowed", context_id="talk").status_code == 200
        if release_state(people, release["id"])["state"] != "running":
            break
    final = release_state(people, release["id"])
    assert final["state"] == "rolled_back", final
    assert set(statuses) == {(200, "v1")}  # every client got the stable answer
    assert final["analysis"]["candidate"]["shadow_requests"] >= 10
    assert final["analysis"]["candidate"]["error_rate"] == 1.0


def test_a_candidate_that_cannot_start_leaves_traffic_on_stable(
    server: RunningServer, people: Team
) -> None:
    register(people, "unstartable")
    deploy(people, "unstartable", "v1", echo_version("fine"))
    broken = [{"backend": "llamacpp", "model_path": "/nonexistent/model.gguf"}]
    deploy(people, "unstartable", "v2", broken)
    release = start_release(people, "unstartable", "v2", steps=[50, 100], interval_s=3600)
    assert release["state"] == "running"
    answers = [chat(people.admin, "unstartable") for _ in range(20)]
    assert {(a.status_code, a.headers.get("x-autoglm-version")) for a in answers} == {(200, "v1")}
    back = ok(people.submitter.post(f"/v1/releases/{release['id']}/rollback"))
    assert back["state"] == "rolled_back"
    # the release loop is still alive: a new release of a healthy version goes through
    deploy(people, "unstartable", "v3", echo_version("also fine"))
    third = start_release(people, "unstartable", "v3", steps=[100], interval_s=3600)
    assert {chat(people.admin, "unstartable").headers["x-autoglm-version"] for _ in range(5)} == {
        "v3"
    }
    ok(people.submitter.post(f"/v1/releases/{third['id']}/abort"))
