"""Fixtures of the SDK tests: the fake server running in a background thread, a clean environment.

The server starts once per session on a free 127.0.0.1 port; the ``fake`` fixture resets it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from tests.unit.sdk.fake_glm_server import ENV_VARS, FakeServer


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeServer]:
    """The running fake; tests use ``fake``, which starts each test from a clean slate."""
    fake = FakeServer()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake server did not start")
        time.sleep(0.01)
    yield fake
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def fake(fake_server: FakeServer) -> FakeServer:
    fake_server.reset()
    return fake_server


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sleeps() -> list[float]:
    """Waits a client asked for, recorded instead of slept."""
    return []


@pytest.fixture
def free_port() -> Iterator[int]:
    """A port that refuses connections: bound, never listening, for the duration of a test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
