"""``autoglm models`` and ``autoglm releases`` against one real server, with each person's key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from tests.conftest import settings_for
from tests.support.registry import http_client, issue
from tests.support.servers import RunningServer, free_port, start_server, wait_until
from typer.testing import CliRunner, Result

from openautoglm.cli.main import app
from openautoglm.cli.remote import parse_duration
from openautoglm.config.settings import ModelConfig

QUESTIONS = [
    {"id": "q1", "prompt": "Capital of France?", "expected": "Paris", "scorer": "exact"},
    {"id": "q2", "prompt": "Where is the Louvre?", "expected": "paris", "scorer": "contains"},
    {"id": "q3", "prompt": "City of the Eiffel tower?", "expected": "Paris", "scorer": "exact"},
]


@dataclass(frozen=True)
class Keys:
    operator: str
    alice: str  # may approve, and submits in the four-eyes test
    bob: str  # may approve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = settings_for(
        tmp_path_factory.mktemp("registry-cli"),
        [ModelConfig(name="echo", backend="echo")],
        registry={"release_tick_s": 0.1, "reload_interval_s": 0.5},
    )
    running = start_server(settings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keys(server: RunningServer) -> Keys:
    with http_client(server, server.admin_key) as admin:
        return Keys(
            operator=issue(admin, "operator"),
            alice=issue(admin, "alice", permissions=["approve_models"]),
            bob=issue(admin, "bob", permissions=["approve_models"]),
        )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("datasets") / "eval.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n", encoding="utf-8")
    return path


def autoglm(server: RunningServer, key: str | None, *args: str) -> Result:
    """Run the CLI in-process against ``server`` as the holder of ``key``."""
    env = {"AUTOGLM_URL": server.base_url, "AUTOGLM_API_KEY": key, "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


def state_of(server: RunningServer, key: str, model: str, version: str) -> str:
    with http_client(server, key) as http:
        response = http.get(f"/v1/registry/models/{model}/versions/{version}")
        assert response.status_code == 200, response.text
        state: str = response.json()["state"]
        return state


def run_status(server: RunningServer, key: str, run_id: str) -> str:
    with http_client(server, key) as http:
        status: str = http.get(f"/v1/registry/validations/{run_id}").json()["status"]
        return status


def add_echo(server: RunningServer, key: str, model: str, version: str, reply: str) -> None:
    added = autoglm(
        server, key, "models", "add-version", model, version, "--backend", "echo",
        "--set", f"reply={reply}",
    )  # fmt: skip
    assert added.exit_code == 0, added.output


def deploy(server: RunningServer, keys: Keys, model: str, version: str, reply: str) -> None:
    add_echo(server, keys.operator, model, version, reply)
    assert autoglm(server, keys.operator, "models", "submit", model, version).exit_code == 0
    approved = autoglm(server, keys.bob, "models", "approve", model, version)
    assert approved.exit_code == 0, approved.output


def test_register_add_version_and_show(server: RunningServer, keys: Keys, tmp_path: Path) -> None:
    registered = autoglm(
        server, keys.operator, "models", "register", "capitals", "--description", "geography",
        "--gate", "accuracy=>=0.8", "--threshold", "max_error_rate=0.02",
    )  # fmt: skip
    assert registered.exit_code == 0, registered.output
    assert "accuracy >= 0.8" in registered.output

    added = autoglm(
        server, keys.operator, "models", "add-version", "capitals", "v1", "--backend", "echo",
        "--set", "reply=Paris", "--tag", "team=geo", "--commit", "abc123",
        "--pipeline-run", "run-7",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "development" in added.output
    spec = tmp_path / "v2.yaml"
    spec.write_text(
        "instances:\n  - {backend: echo, reply: Lyon}\nparameters: {temperature: 0}\n",
        encoding="utf-8",
    )
    from_file = autoglm(
        server, keys.operator, "models", "add-version", "capitals", "v2", "--spec", str(spec)
    )
    assert from_file.exit_code == 0, from_file.output

    shown = autoglm(server, keys.operator, "models", "show", "capitals", "v1")
    assert shown.exit_code == 0, shown.output
    for expected in ("development", "pending_approval", "Paris", "abc123", "run-7", "team"):
        assert expected in shown.stdout
    model = autoglm(server, keys.operator, "models", "show", "capitals")
    assert model.exit_code == 0, model.output
    assert "geography" in model.stdout and "v1" in model.stdout and "v2" in model.stdout
    listed = autoglm(server, keys.operator, "models", "list")
    assert listed.exit_code == 0 and "capitals" in listed.stdout


def test_four_eyes_approval(server: RunningServer, keys: Keys) -> None:
    assert autoglm(server, keys.alice, "models", "register", "foureyes").exit_code == 0
    add_echo(server, keys.alice, "foureyes", "v1", "Paris")
    submitted = autoglm(server, keys.alice, "models", "submit", "foureyes", "v1")
    assert submitted.exit_code == 0 and "pending_approval" in submitted.output

    own = autoglm(server, keys.alice, "models", "approve", "foureyes", "v1")
    assert own.exit_code == 1
    assert "four_eyes" in own.stderr and "cannot also approve" in own.stderr

    approved = autoglm(server, keys.bob, "models", "approve", "foureyes", "v1")
    assert approved.exit_code == 0, approved.output
    assert "deployed" in approved.output
    shown = autoglm(server, keys.bob, "models", "show", "foureyes")
    assert "champion" in shown.stdout


def test_validate_passes_fails_and_compares(
    server: RunningServer, keys: Keys, dataset: Path, tmp_path: Path
) -> None:
    gate = ("--gate", "accuracy=>=0.8")
    assert autoglm(server, keys.operator, "models", "register", "quiz", *gate).exit_code == 0
    deploy(server, keys, "quiz", "v1", "London")  # the champion answers wrong
    add_echo(server, keys.operator, "quiz", "good", "Paris")
    add_echo(server, keys.operator, "quiz", "bad", "London")

    passed = autoglm(server, keys.operator, "models", "validate", "quiz", "good", "--dataset",
                     str(dataset), "--concurrency", "2")  # fmt: skip
    assert passed.exit_code == 0, passed.output
    assert "accuracy" in passed.stdout and "p99_latency_s" in passed.stdout
    assert "pass" in passed.stdout and "passed" in passed.stdout
    # A passing run submits the version on behalf of whoever started it.
    assert wait_until(
        lambda: state_of(server, keys.operator, "quiz", "good") == "pending_approval", 5
    )

    failed = autoglm(server, keys.operator, "models", "validate", "quiz", "bad", "--dataset",
                     str(dataset), "--gate", "accuracy=>=0.99")  # fmt: skip
    assert failed.exit_code == 1, failed.output
    assert "FAIL" in failed.stdout and "failed" in failed.stdout
    assert state_of(server, keys.operator, "quiz", "bad") == "development"

    compared = autoglm(server, keys.operator, "models", "compare", "quiz", "good", "bad")
    assert compared.exit_code == 0, compared.output
    header = next(line for line in compared.stdout.splitlines() if "metric" in line)
    assert "good" in header and "bad" in header
    assert "accuracy" in compared.stdout and "different datasets" not in compared.output

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(QUESTIONS[0]) + "\n", encoding="utf-8")
    queued = autoglm(server, keys.operator, "models", "validate", "quiz", "bad", "--dataset",
                     str(other), "--no-wait")  # fmt: skip
    assert queued.exit_code == 0, queued.output
    run_id = queued.stdout.strip()
    assert run_id.startswith("val")
    assert wait_until(lambda: run_status(server, keys.operator, run_id) != "running", 5)
    mixed = autoglm(server, keys.operator, "models", "compare", "quiz", "good", "bad")
    assert mixed.exit_code == 0 and "different datasets" in mixed.stderr


def test_release_start_status_abort(server: RunningServer, keys: Keys) -> None:
    assert autoglm(server, keys.operator, "models", "register", "rollout").exit_code == 0
    deploy(server, keys, "rollout", "v1", "one")
    deploy(server, keys, "rollout", "v2", "two")

    started = autoglm(server, keys.operator, "releases", "start", "rollout", "--candidate", "v2",
                      "--steps", "20,100", "--interval", "1m", "--threshold",
                      "min_requests=5")  # fmt: skip
    assert started.exit_code == 0, started.output
    release_id = started.stdout.strip()
    assert release_id.startswith("rel")

    status = autoglm(server, keys.operator, "releases", "status", release_id)
    assert status.exit_code == 0, status.output
    for expected in ("running", "stable", "candidate", "20%", "error rate", "verdict"):
        assert expected in status.stdout
    listed = autoglm(server, keys.operator, "releases", "list", "--model", "rollout", "--active")
    assert release_id in listed.stdout

    aborted = autoglm(server, keys.operator, "releases", "abort", release_id, "--reason", "enough")
    assert aborted.exit_code == 0, aborted.output
    assert "aborted" in aborted.output
    watched = autoglm(server, keys.operator, "releases", "watch", release_id, "--timeout", "5")
    assert watched.exit_code == 1 and "aborted" in watched.stdout and "enough" in watched.stdout


def test_missing_dataset_file(server: RunningServer, keys: Keys, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = autoglm(server, keys.operator, "models", "validate", "quiz", "good", "--dataset",
                     str(missing))  # fmt: skip
    assert result.exit_code == 2
    assert "cannot read dataset" in result.stderr and "nope.jsonl" in result.stderr


def test_unknown_model_shows_the_servers_message(server: RunningServer, keys: Keys) -> None:
    result = autoglm(server, keys.operator, "models", "show", "no-such-model")
    assert result.exit_code == 1
    assert "model 'no-such-model' is not registered (model_not_registered)" in result.stderr


def test_missing_key_and_unreachable_server(server: RunningServer) -> None:
    no_key = autoglm(server, None, "models", "list")
    assert no_key.exit_code == 2 and "AUTOGLM_API_KEY" in no_key.stderr

    url = f"http://127.0.0.1:{free_port()}"
    down = autoglm(server, "sk-anything", "models", "list", "--url", url)
    assert down.exit_code == 1
    assert f"cannot reach the server at {url}" in down.stderr and "autoglm serve" in down.stderr


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("1m", 60), ("2h", 7200), ("1.5m", 90)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1x", "-5", "0s", "m"])
def test_parse_duration_refuses_junk(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration(text)
