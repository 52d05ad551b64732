"""A real uvicorn server on a free 127.0.0.1 port, run in a background thread.

The app is the production ``create_app``; tests reach its ``Services`` for assertions about
internal state (e.g. that a disconnected stream freed its generation) and run coroutines on the
server's own loop with :meth:`RunningServer.call`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from openautoglm.api.app import create_app
from openautoglm.config.settings import Settings
from openautoglm.core.clock import Clock
from openautoglm.services import Services

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    settings: Settings
    app: FastAPI
    server: uvicorn.Server
    port: int
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def admin_key(self) -> str:
        issued = self.services.issued_admin_key
        assert issued is not None, "this server's store was bootstrapped elsewhere"
        return issued.secret

    def call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 30) -> T:
        """Run a coroutine on the server's event loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)


def start_server(
    settings: Settings, startup_timeout_s: float = 120, clock: Clock | None = None
) -> RunningServer:
    """Start ``create_app(settings)`` under uvicorn and wait until it accepts requests."""
    port = free_port()
    app = create_app(settings, clock=clock)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio", lifespan="on"
    )
    running = RunningServer(settings=settings, app=app, server=uvicorn.Server(config), port=port)

    def run() -> None:
        loop = asyncio.new_event_loop()
        running.loop = loop
        try:
            loop.run_until_complete(running.server.serve())
        finally:
            loop.close()

    running.thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    running.thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not running.server.started:
        if not running.thread.is_alive():
            raise RuntimeError("test server failed to start; see the log above")
        if time.monotonic() > deadline:
            running.stop()
            raise TimeoutError("test server did not start in time")
        time.sleep(0.02)
    return running


def wait_until(predicate: Any, timeout_s: float = 10, interval_s: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or the deadline passes; returns the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval_s)
