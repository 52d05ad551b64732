"""Webhooks: signatures, the envelope, and the dispatcher against a real HTTP receiver.

The receiver is a few lines of asyncio on 127.0.0.1 (port 0) that answers from a script of status
codes; the outbox is SQLite in a temporary file, and time moves only when the test says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.support.servers import free_port

from openautoglm.config.registry import WebhookConfig
from openautoglm.core.clock import ManualClock
from openautoglm.registry.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    GONE_WEBHOOK_ERROR,
    SIGNATURE_HEADER,
    Delivery,
    WebhookDispatcher,
    envelope,
    sign,
    verify_signature,
)
from openautoglm.store.database import open_database, write_transaction
from openautoglm.store.webhooks_sql import SqlWebhookOutbox, enqueue

SECRET = "whsec-0123456789abcdef"
BODY = b'{"data":{},"event":"alias.moved","id":"whd_1","occurred_at":"2026-01-01T00:00:00Z"}'
NOW_S = 1_767_225_600


# --- signing ------------------------------------------------------------------------------------


def test_a_signature_verifies_with_the_same_secret_and_body() -> None:
    header = sign(SECRET, BODY, NOW_S)
    assert header.startswith(f"t={NOW_S},v1=") and len(header.split("v1=")[1]) == 64
    assert verify_signature(SECRET, header, BODY, NOW_S)
    assert verify_signature(SECRET, header, BODY, NOW_S + 300)  # within the tolerance
    assert verify_signature(SECRET, f"{header},v1={'0' * 64}", BODY, NOW_S)  # rotated secrets


def test_a_signature_fails_for_another_body_secret_or_time() -> None:
    header = sign(SECRET, BODY, NOW_S)
    assert not verify_signature(SECRET, header, BODY.replace(b"{}", b'{"x":1}'), NOW_S)
    assert not verify_signature(SECRET, header, BODY + b" ", NOW_S)
    assert not verify_signature("another-secret-0123", header, BODY, NOW_S)
    assert not verify_signature(SECRET, header, BODY, NOW_S + 301)  # stale: a replay
    assert not verify_signature(SECRET, header, BODY, NOW_S - 301)  # from the future
    assert not verify_signature(SECRET, header, BODY, NOW_S + 60, tolerance_s=30)
    # the timestamp is signed: moving it breaks the signature
    moved = header.replace(f"t={NOW_S}", f"t={NOW_S + 1}")
    assert not verify_signature(SECRET, moved, BODY, NOW_S)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={NOW_S}",
        "v1=" + "0" * 64,
        f"t=soon,v1={'0' * 64}",
        f"t=-{NOW_S},v1={'0' * 64}",
        f"t={NOW_S},t={NOW_S},v1={'0' * 64}",
        f"t={NOW_S},v1=",
        f"t={NOW_S};v1={'0' * 64}",
        f"t={NOW_S},v1=é{'0' * 63}",
        f"t=١٢٣,v1={'0' * 64}",
        f"t={'9' * 5000},v1={'0' * 64}",
    ],
)
def test_a_malformed_signature_header_is_refused(header: str) -> None:
    assert not verify_signature(SECRET, header, BODY, NOW_S)


def test_the_envelope_is_canonical_json_that_keeps_chinese() -> None:
    at = datetime(2026, 5, 1, 8, 30, tzinfo=UTC)
    body = envelope("whd_1", "version.transitioned", {"模型": "glm-4", "b": [1, 2]}, at)
    assert body == (
        '{"data":{"b":[1,2],"模型":"glm-4"},"event":"version.transitioned",'
        '"id":"whd_1","occurred_at":"2026-05-01T08:30:00Z"}'
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        envelope("whd_1", "alias.moved", {}, datetime(2026, 5, 1))
    with pytest.raises(TypeError):
        envelope("whd_1", "alias.moved", {"at": at}, at)


# --- a real receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server answering each POST with the next scripted status (then the last one)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in head[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(headers, body))
            if self.hang:
                await reader.read()  # answer nothing until the client gives up and hangs up
                return
            index = min(len(self.received), len(self.statuses)) - 1
            status = self.statuses[index]
            answer = b"ok" if status < 300 else f"failure {status}".encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(answer)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away mid-request
        finally:
            writer.close()


@dataclass
class Setup:
    engine: AsyncEngine
    outbox: SqlWebhookOutbox
    clock: ManualClock
    path: Path
    receivers: list[Receiver] = field(default_factory=list)
    dispatchers: list[WebhookDispatcher] = field(default_factory=list)

    async def receiver(self, statuses: list[int] | None = None, port: int = 0) -> Receiver:
        receiver = await Receiver(statuses or [200], port=port).start()
        self.receivers.append(receiver)
        return receiver

    def dispatcher(
        self, *webhooks: WebhookConfig, poll_interval_s: float = 0.5, batch_size: int = 32
    ) -> WebhookDispatcher:
        dispatcher = WebhookDispatcher(
            self.outbox,
            webhooks,
            self.clock,
            poll_interval_s=poll_interval_s,
            batch_size=batch_size,
        )
        self.dispatchers.append(dispatcher)
        return dispatcher

    async def enqueue(self, *webhooks: WebhookConfig, event: str = "alias.moved") -> list[str]:
        data = {"alias": "prod", "note": "已上线"}
        async with write_transaction(self.engine) as connection:
            return await enqueue(connection, webhooks, event, data, self.clock.now())

    async def get(self, delivery_id: str) -> Delivery:
        delivery = await self.outbox.get(delivery_id)
        assert delivery is not None
        return delivery


def webhook(
    url: str, name: str = "ci", max_attempts: int = 8, timeout_s: float = 2
) -> WebhookConfig:
    return WebhookConfig(
        name=name, url=url, secret=SECRET, max_attempts=max_attempts, timeout_s=timeout_s
    )


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    path = tmp_path / "outbox.db"
    engine = await open_database(f"sqlite+aiosqlite:///{path}")
    state = Setup(engine, SqlWebhookOutbox(engine), ManualClock(), path)
    try:
        yield state
    finally:
        for dispatcher in state.dispatchers:
            await dispatcher.close()
        for receiver in state.receivers:
            await receiver.stop()
        await engine.dispose()


# --- the dispatcher ---------------------------------------------------------------------------


async def test_a_delivery_is_sent_signed_and_marked_delivered(setup: Setup) -> None:
    receiver = await setup.receiver()
    hook = webhook(receiver.url)
    [delivery_id] = await setup.enqueue(hook)
    dispatcher = setup.dispatcher(hook)

    assert await dispatcher.run_once() == 1
    assert await dispatcher.run_once() == 0

    [request] = receiver.received
    stored = await setup.get(delivery_id)
    assert request.body == stored.payload.encode()
    assert "已上线" in request.body.decode()
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.headers[EVENT_HEADER.lower()] == "alias.moved"
    assert request.headers[DELIVERY_HEADER.lower()] == delivery_id
    now_s = int(setup.clock.now().timestamp())
    assert verify_signature(SECRET, request.headers[SIGNATURE_HEADER.lower()], request.body, now_s)
    assert not verify_signature(
        "not-the-secret-0000", request.headers[SIGNATURE_HEADER.lower()], request.body, now_s
    )
    assert stored.delivered_at == setup.clock.now() and stored.next_attempt_at is None
    assert stored.attempts == 1


async def test_failures_back_off_exponentially_until_delivered(setup: Setup) -> None:
    receiver = await setup.receiver([500, 500, 200])
    hook = webhook(receiver.url)
    [delivery_id] = await setup.enqueue(hook)
    dispatcher = setup.dispatcher(hook)
    start = setup.clock.now()

    assert await dispatcher.run_once() == 1
    first = await setup.get(delivery_id)
    assert first.attempts == 1 and first.last_error is not None and "500" in first.last_error
    assert first.next_attempt_at is not None and (first.next_attempt_at - start).seconds == 1
    assert await dispatcher.run_once() == 0  # not due yet

    setup.clock.advance(1)
    assert await dispatcher.run_once() == 1
    second = await setup.get(delivery_id)
    assert second.attempts == 2 and second.next_attempt_at is not None
    assert (second.next_attempt_at - setup.clock.now()).seconds == 2

    setup.clock.advance(1)
    assert await dispatcher.run_once() == 0  # the second backoff is 2 s
    setup.clock.advance(1)
    assert await dispatcher.run_once() == 1
    done = await setup.get(delivery_id)
    assert (done.attempts, done.delivered_at, done.next_attempt_at) == (3, setup.clock.now(), None)
    assert len(receiver.received) == 3
    assert len({r.body for r in receiver.received}) == 1  # the same bytes on every retry


async def test_a_delivery_is_given_up_after_max_attempts(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await setup.receiver([500])
    hook = webhook(receiver.url, max_attempts=3)
    [delivery_id] = await setup.enqueue(hook)
    dispatcher = setup.dispatcher(hook)

    for delay_s in (0, 1, 2):
        setup.clock.advance(delay_s)
        assert await dispatcher.run_once() == 1
    setup.clock.advance(3600)
    assert await dispatcher.run_once() == 0

    dead = await setup.get(delivery_id)
    assert (dead.attempts, dead.next_attempt_at, dead.delivered_at) == (3, None, None)
    assert dead.last_error is not None and "HTTP 500" in dead.last_error
    assert len(receiver.received) == 3
    assert any("given up after 3 attempts" in r.getMessage() for r in caplog.records)


async def test_a_refused_connection_is_retried(setup: Setup) -> None:
    port = free_port()  # nothing listens here yet
    hook = webhook(f"http://127.0.0.1:{port}/hooks")
    [delivery_id] = await setup.enqueue(hook)
    dispatcher = setup.dispatcher(hook)

    assert await dispatcher.run_once() == 1
    refused = await setup.get(delivery_id)
    assert refused.attempts == 1 and refused.next_attempt_at is not None
    assert refused.last_error is not None and "ConnectError" in refused.last_error

    receiver = await setup.receiver(port=port)
    setup.clock.advance(1)
    assert await dispatcher.run_once() == 1
    assert (await setup.get(delivery_id)).delivered_at is not None
    assert len(receiver.received) == 1


async def test_a_receiver_that_does_not_answer_in_time_is_a_failure(setup: Setup) -> None:
    receiver = await setup.receiver()
    receiver.hang = True
    hook = webhook(receiver.url, timeout_s=0.2)
    [delivery_id] = await setup.enqueue(hook)

    assert await setup.dispatcher(hook).run_once() == 1
    late = await setup.get(delivery_id)
    assert late.last_error == "no answer within 0.2 s" and late.next_attempt_at is not None


async def test_a_delivery_for_a_removed_webhook_is_given_up(setup: Setup) -> None:
    receiver = await setup.receiver()
    [delivery_id] = await setup.enqueue(webhook(receiver.url, name="removed"))

    assert await setup.dispatcher(webhook(receiver.url, name="other")).run_once() == 0
    gone = await setup.get(delivery_id)
    assert (gone.last_error, gone.next_attempt_at, gone.delivered_at) == (
        GONE_WEBHOOK_ERROR,
        None,
        None,
    )
    assert receiver.received == []


async def test_deliveries_survive_a_restart(setup: Setup) -> None:
    receiver = await setup.receiver()
    hook = webhook(receiver.url)
    [delivery_id] = await setup.enqueue(hook)
    await setup.engine.dispose()  # the process stops before sending

    engine = await open_database(f"sqlite+aiosqlite:///{setup.path}")
    try:
        outbox = SqlWebhookOutbox(engine)
        dispatcher = WebhookDispatcher(outbox, [hook], setup.clock)
        try:
            assert await dispatcher.run_once() == 1
        finally:
            await dispatcher.close()
        delivered = await outbox.get(delivery_id)
        assert delivered is not None and delivered.delivered_at is not None
    finally:
        await engine.dispose()
    assert len(receiver.received) == 1


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


class ObservedOutbox(SqlWebhookOutbox):
    """Counts its claims, and fails the first ``failures`` of them (a database briefly down)."""

    def __init__(self, engine: AsyncEngine, failures: int = 0) -> None:
        super().__init__(engine)
        self.failures = failures
        self.claims = 0

    async def claim_due(self, now: datetime, limit: int, lease_s: float) -> list[Delivery]:
        self.claims += 1
        if self.claims <= self.failures:
            raise OSError("database is down")
        return await super().claim_due(now, limit, lease_s)


async def test_run_sends_on_wake_without_waiting_for_the_poll(setup: Setup) -> None:
    receiver = await setup.receiver()
    hook = webhook(receiver.url)
    outbox = ObservedOutbox(setup.engine)
    dispatcher = WebhookDispatcher(outbox, [hook], setup.clock, poll_interval_s=60)
    task = asyncio.create_task(dispatcher.run())
    try:
        await _wait_for(lambda: outbox.claims == 1)  # found nothing due; now waits up to 60 s
        await setup.enqueue(hook)
        dispatcher.wake()
        await _wait_for(lambda: len(receiver.received) == 1)
        assert outbox.claims == 2
    finally:
        await dispatcher.close()
        await asyncio.wait_for(task, timeout=3)
    assert await dispatcher.run_once() == 0  # closed


async def test_run_survives_store_errors(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    receiver = await setup.receiver()
    hook = webhook(receiver.url)
    await setup.enqueue(hook)
    dispatcher = WebhookDispatcher(
        ObservedOutbox(setup.engine, failures=2), [hook], setup.clock, poll_interval_s=0.01
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        await _wait_for(lambda: len(receiver.received) == 1)
    finally:
        await dispatcher.close()
        await asyncio.wait_for(task, timeout=3)
    assert sum("webhook dispatch failed" in r.getMessage() for r in caplog.records) == 2
    assert all(r.levelno == logging.ERROR for r in caplog.records if "dispatch" in r.getMessage())


async def test_a_full_batch_is_followed_at_once_by_the_next(setup: Setup) -> None:
    receiver = await setup.receiver()
    hook = webhook(receiver.url)
    for _ in range(5):
        await setup.enqueue(hook)
    dispatcher = setup.dispatcher(hook, batch_size=2, poll_interval_s=60)
    task = asyncio.create_task(dispatcher.run())
    try:
        await _wait_for(lambda: len(receiver.received) == 5)
    finally:
        await dispatcher.close()
        await asyncio.wait_for(task, timeout=3)
    assert json.loads(receiver.received[0].body)["event"] == "alias.moved"


async def test_backoff_doubles_up_to_the_cap_and_jitters_only_with_an_rng(setup: Setup) -> None:
    async with httpx.AsyncClient() as client:
        exact = WebhookDispatcher(setup.outbox, [], setup.clock, client=client)
        assert [exact.backoff_s(n) for n in (1, 2, 3, 4, 9, 10)] == [1, 2, 4, 8, 256, 300]
        jittered = WebhookDispatcher(
            setup.outbox, [], setup.clock, client=client, rng=random.Random(7)
        )
        delays = [jittered.backoff_s(3) for _ in range(50)]
    assert all(3.6 <= d <= 4.4 for d in delays) and len(set(delays)) > 1
