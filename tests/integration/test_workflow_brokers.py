"""Broker triggers against a real Redis and a real RabbitMQ: a consumer killed mid-batch loses no
message and doubles no run, and poison messages never block the ones behind them."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika import Message
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPConnectionError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from openautoglm.core.errors import InvalidRequestError
from openautoglm.workflows.model import Run, RunState
from openautoglm.workflows.triggers.brokers import RabbitQueueTrigger, RedisStreamTrigger

REDIS_URL = os.environ.get("AUTOGLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("AUTOGLM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
GROUP = "workflows"


class RecordingStarter:
    """A RunStarter that honours dedupe keys and can fail the way a crashing consumer does."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.calls = 0
        self.crash_after_recording: set[str] = set()
        self.hang_at: int | None = None
        self.hung = asyncio.Event()

    async def start(
        self,
        workflow: str,
        inputs: Mapping[str, Any],
        *,
        trigger: str,
        dedupe_key: str | None = None,
        priority: int | None = None,
        deadline: datetime | None = None,
    ) -> Run:
        assert dedupe_key is not None
        self.calls += 1
        if inputs.get("refuse"):
            raise InvalidRequestError("inputs do not match the workflow")
        if dedupe_key in self.runs:
            return self.runs[dedupe_key]
        run = Run(
            id=f"run-{len(self.runs)}",
            workflow=workflow,
            workflow_version=1,
            state=RunState.QUEUED,
            inputs=dict(inputs),
            created_at=datetime.now(UTC),
            trigger=trigger,
            dedupe_key=dedupe_key,
        )
        self.runs[dedupe_key] = run  # committed: from here on a retry must find it
        if dedupe_key in self.crash_after_recording:
            self.crash_after_recording.discard(dedupe_key)
            raise ConnectionError("connection lost after the commit")
        if self.hang_at == len(self.runs):
            self.hang_at = None
            self.hung.set()
            await asyncio.Event().wait()  # frozen mid-batch until the test kills the consumer
        return run


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout_s``."""
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def eventually_async(
    value: Callable[[], Awaitable[object]], expected: object, timeout_s: float = 5.0
) -> None:
    """Poll ``value`` until it returns ``expected``, failing after ``timeout_s``."""
    seen: object = None
    for _ in range(int(timeout_s / 0.02)):
        seen = await value()
        if seen == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still {seen!r}, not {expected!r}")


def redis_client() -> Redis:
    return Redis.from_url(
        REDIS_URL, socket_connect_timeout=1.0, socket_timeout=3.0, retry=Retry(NoBackoff(), 0)
    )


class Streams:
    """Unique stream names for one test, deleted (with their dead-letter streams) afterwards."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.names: list[str] = []

    def new(self) -> str:
        name = f"test:wf:{secrets.token_hex(6)}"
        self.names.append(name)
        return name

    async def delete(self) -> None:
        keys = [key for name in self.names for key in (name, f"{name}:dead")]
        if keys:
            await self.client.delete(*keys)


@pytest.fixture
async def streams() -> AsyncIterator[Streams]:
    client = redis_client()
    try:
        await client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        await client.aclose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis is not reachable at {REDIS_URL} ({exc}); set AUTOGLM_TEST_REDIS_URL")
    handle = Streams(client)
    try:
        yield handle
    finally:
        await handle.delete()
        await client.aclose()


async def pending_count(redis: Redis, stream: str) -> int:
    summary = await redis.xpending(stream, GROUP)
    return int(summary["pending"])


async def test_redis_consumer_killed_mid_batch_loses_nothing_and_doubles_nothing(
    streams: Streams,
) -> None:
    redis, stream = streams.client, streams.new()
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(1000):
            pipe.xadd(stream, {"inputs": json.dumps({"n": n})})
        entry_ids = [entry_id.decode() for entry_id in await pipe.execute()]
    starter = RecordingStarter()
    starter.crash_after_recording = {f"redis:{stream}:{entry_ids[n]}" for n in (10, 137, 333)}
    starter.hang_at = 500

    first_client = redis_client()
    first = RedisStreamTrigger(
        first_client,
        stream,
        GROUP,
        "consumer-a",
        "ingest",
        starter,
        batch=50,
        block_ms=50,
        retry_delay_s=0.01,
    )
    first_task = asyncio.create_task(first.run())
    await asyncio.wait_for(starter.hung.wait(), timeout=10)
    in_crash_window = await pending_count(redis, stream)
    first_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first_task
    await first_client.aclose()
    assert first.stats.failed == 3
    assert in_crash_window > 4  # read, some even recorded, none acknowledged

    second = RedisStreamTrigger(
        redis,
        stream,
        GROUP,
        "consumer-b",
        "ingest",
        starter,
        batch=100,
        block_ms=50,
        claim_idle_ms=100,
    )
    deadline = asyncio.get_running_loop().time() + 15
    while len(starter.runs) < 1000 or await pending_count(redis, stream) > 0:
        assert asyncio.get_running_loop().time() < deadline, "the second consumer did not finish"
        await second.run_once()

    assert len(starter.runs) == 1000
    assert sorted(run.inputs["n"] for run in starter.runs.values()) == list(range(1000))
    assert set(starter.runs) == {f"redis:{stream}:{entry_id}" for entry_id in entry_ids}
    # The three crashed after recording and the frozen one were delivered twice, and their
    # second start returned the run already recorded.
    assert starter.calls == 1000 + 3 + 1
    assert second.stats.redelivered >= in_crash_window
    assert first.stats.started + second.stats.started == 1000
    assert await pending_count(redis, stream) == 0


async def test_redis_poison_entries_are_dead_lettered_and_do_not_block(streams: Streams) -> None:
    redis, stream = streams.client, streams.new()
    entries: list[dict[Any, Any]] = [
        {"inputs": '{"n": 1}'},
        {"inputs": "{not json"},
        {"inputs": "[1, 2]"},
        {"user": "ann", "n": "3"},
        {"inputs": '{"refuse": true}'},
        {"inputs": '{"n": 5}'},
    ]
    for fields in entries:
        await redis.xadd(stream, fields)
    starter = RecordingStarter()
    trigger = RedisStreamTrigger(redis, stream, GROUP, "c", "ingest", starter, block_ms=10)
    assert await trigger.run_once() == len(entries)

    assert [run.inputs for run in starter.runs.values()] == [
        {"n": 1},
        {"user": "ann", "n": "3"},
        {"n": 5},
    ]
    assert (trigger.stats.started, trigger.stats.rejected) == (3, 3)
    assert await pending_count(redis, stream) == 0
    dead: Any = await redis.xrange(f"{stream}:dead")
    reasons = [fields[b"dead_reason"].decode() for _, fields in dead]
    assert len(reasons) == 3
    assert "not JSON" in reasons[0]
    assert "not an object" in reasons[1]
    assert "refused" in reasons[2]
    assert dead[0][1][b"inputs"] == b"{not json"


async def test_redis_group_creation_is_idempotent(streams: Streams) -> None:
    redis, stream = streams.client, streams.new()
    starter = RecordingStarter()
    for name in ("a", "b"):
        await RedisStreamTrigger(redis, stream, GROUP, name, "w", starter).ensure_group()
    assert [group["name"] for group in await redis.xinfo_groups(stream)] == [GROUP.encode()]


class Queues:
    """Unique queue names for one test on one channel, deleted afterwards."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.names: list[str] = []

    def new(self, suffix: str = "") -> str:
        name = f"test.wf.{secrets.token_hex(6)}{suffix}"
        self.names.append(name)
        return name

    async def publish(self, queue: str, body: bytes, message_id: str | None = None) -> None:
        await self.channel.default_exchange.publish(Message(body, message_id=message_id), queue)

    async def ready(self, queue: str) -> int | None:
        declared = await self.channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count


@pytest.fixture
async def queues() -> AsyncIterator[Queues]:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
    except (AMQPConnectionError, ConnectionError, OSError, TimeoutError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"RabbitMQ is not reachable at {AMQP_URL} ({exc}); set AUTOGLM_TEST_AMQP_URL")
    handle = Queues(await connection.channel())
    try:
        yield handle
    finally:
        for name in handle.names:
            await handle.channel.queue_delete(name)
        await connection.close()


async def test_rabbit_connection_closed_mid_way_loses_nothing_and_doubles_nothing(
    queues: Queues,
) -> None:
    queue, dead_queue = queues.new(), queues.new(".dead")
    await queues.channel.declare_queue(dead_queue, durable=True)
    dead_lettering: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_queue,
    }
    await queues.channel.declare_queue(queue, durable=True, arguments=dead_lettering)
    poison = {77: b"{not json", 222: b'"a string"'}
    for n in range(300):
        message_id = None if n % 10 == 0 else f"m{n}"  # some keyed by the sha256 of the body
        await queues.publish(queue, json.dumps({"n": n}).encode(), message_id)
        if n in poison:
            await queues.publish(queue, poison[n])
    starter = RecordingStarter()
    starter.crash_after_recording = {f"amqp:{queue}:m{n}" for n in (11, 57, 99)}
    starter.hang_at = 150

    def trigger() -> RabbitQueueTrigger:
        return RabbitQueueTrigger(
            AMQP_URL,
            queue,
            "ingest",
            starter,
            prefetch=50,
            queue_arguments=dead_lettering,
            requeue_delay_s=0.02,
        )

    first = trigger()
    first_task = asyncio.create_task(first.run())
    await asyncio.wait_for(starter.hung.wait(), timeout=10)
    first_task.cancel()  # the consumer dies with messages received but unacknowledged
    with pytest.raises(asyncio.CancelledError):
        await first_task
    assert first.stats.failed == 3

    second = trigger()
    second_task = asyncio.create_task(second.run())
    try:
        await eventually(lambda: len(starter.runs) == 300)
        # Poison published last: once it is rejected, everything before it has been settled.
        await queues.publish(queue, b"sentinel")
        await eventually(lambda: first.stats.rejected + second.stats.rejected == 3)
    finally:
        second_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second_task

    assert len(starter.runs) == 300
    assert sorted(run.inputs["n"] for run in starter.runs.values()) == list(range(300))
    assert second.stats.redelivered > 0
    assert starter.calls > 300
    assert await queues.ready(queue) == 0
    # Dead-lettering is asynchronous in the broker.
    await eventually_async(lambda: queues.ready(dead_queue), 3)


async def test_rabbit_refused_and_transiently_failed_messages(queues: Queues) -> None:
    queue = queues.new()
    await queues.channel.declare_queue(queue, durable=True)
    starter = RecordingStarter()
    starter.crash_after_recording = {f"amqp:{queue}:ok"}
    for message_id, body in (("refused", b'{"refuse": true}'), ("ok", b'{"n": 1}')):
        await queues.publish(queue, body, message_id)
    trigger = RabbitQueueTrigger(AMQP_URL, queue, "ingest", starter, requeue_delay_s=0.01)
    task = asyncio.create_task(trigger.run())
    try:
        await eventually(lambda: trigger.stats.started == 1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (trigger.stats.rejected, trigger.stats.failed, trigger.stats.redelivered) == (1, 1, 1)
    assert list(starter.runs) == [f"amqp:{queue}:ok"]
