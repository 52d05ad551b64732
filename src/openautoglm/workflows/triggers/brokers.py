"""Broker triggers: start a workflow run for each message of a Redis stream or a RabbitMQ queue.

Invariant, for both: a message is acknowledged only after the run it asks for is recorded
(``RunStarter.start`` returned), so a crash never loses a message; and the run's ``dedupe_key`` is
the message's identity, so a message delivered again — after a crash between the start and the
acknowledgement — returns the run already started instead of starting another. At-least-once
delivery plus an idempotent start gives one run per message.

A message that can never start a run is *poison*: its payload is not a JSON object, or the starter
refuses it as a client error (a 4xx :class:`OpenAutoGLMError` other than a rate limit). It is
logged, counted as rejected and taken off the queue, so it never blocks the messages behind it.
Any other failure of the starter is transient: the message stays unacknowledged and is retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from openautoglm.core.errors import OpenAutoGLMError, RateLimitError
from openautoglm.workflows.model import RunStarter

logger = logging.getLogger(__name__)

_DEAD_STREAM_MAXLEN = 10_000


@dataclass(slots=True)
class TriggerStats:
    """What a trigger has done since it was made.

    ``started`` counts messages whose run was started (or found already started) and then
    acknowledged; ``redelivered`` counts messages seen again after another delivery — a reclaimed
    Redis entry or an AMQP message flagged redelivered — whose start may have returned an existing
    run (the starter does not say whether it created one); ``rejected`` counts poison messages;
    ``failed`` counts transient start failures, each retried later.
    """

    started: int = 0
    redelivered: int = 0
    rejected: int = 0
    failed: int = 0


class _PoisonError(ValueError):
    """The message can never start a run."""


def _text(value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _PoisonError(f"not UTF-8: {exc}") from exc


def _json_object(raw: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _PoisonError(f"payload is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _PoisonError(f"payload is a JSON {type(value).__name__}, not an object")
    return value


def _is_refusal(exc: Exception) -> bool:
    """A client error of the starter: retrying the same message cannot succeed."""
    return (
        isinstance(exc, OpenAutoGLMError)
        and 400 <= exc.status < 500
        and not isinstance(exc, RateLimitError)
    )


Fields = Mapping[bytes | str, bytes | str]


class RedisStreamTrigger:
    """Starts ``workflow`` for each entry of a Redis stream, as one consumer of a consumer group.

    Inputs are the JSON object in the entry's ``inputs_field``; an entry without that field gives
    its fields as string inputs. Entries another consumer read but never acknowledged (it crashed)
    are reclaimed once idle for ``claim_idle_ms``. Poison entries are acknowledged and copied, with
    the reason, to ``<stream>:dead`` (unless ``dead_letter`` is false). ``block_ms`` must stay
    below the client's ``socket_timeout``, or every quiet read times out.
    """

    def __init__(
        self,
        redis: Redis,
        stream: str,
        group: str,
        consumer: str,
        workflow: str,
        starter: RunStarter,
        *,
        inputs_field: str = "inputs",
        batch: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        start_id: str = "0",
        dead_letter: bool = True,
        retry_delay_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._workflow = workflow
        self._starter = starter
        self._inputs_field = inputs_field
        self._batch = batch
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._start_id = start_id
        self.dead_stream: str | None = f"{stream}:dead" if dead_letter else None
        self._retry_delay_s = retry_delay_s
        self.stats = TriggerStats()
        self._group_ready = False
        self._claim_cursor = "0-0"

    async def ensure_group(self) -> None:
        """Create the stream and the consumer group, unless they exist."""
        try:
            await self._redis.xgroup_create(
                self.stream, self.group, id=self._start_id, mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def run_once(self) -> int:
        """Reclaim idle pending entries, read new ones, start their runs; how many were handled.

        New entries are waited for up to ``block_ms`` only when nothing was reclaimed. A transient
        start failure ends the batch: that entry and the rest stay pending and are reclaimed later.
        """
        if not self._group_ready:
            await self.ensure_group()
        entries = await self._reclaim()
        block = None if entries or self._block_ms <= 0 else self._block_ms
        reply = await self._redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self._batch, block=block
        )
        entries += _stream_entries(reply)
        handled = 0
        for entry_id, fields in entries:
            if not await self._handle(_text(entry_id), fields):
                break
            handled += 1
        return handled

    async def run(self) -> None:
        """Consume until cancelled; Redis outages and start failures are logged and waited out."""
        while True:
            failed_before = self.stats.failed
            try:
                await self.run_once()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("redis stream %r unreachable, retrying: %s", self.stream, exc)
                await asyncio.sleep(self._retry_delay_s)
                continue
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._group_ready = False  # the stream was deleted under us: recreate it
                continue
            if self.stats.failed > failed_before:
                await asyncio.sleep(self._retry_delay_s)

    async def _reclaim(self) -> list[tuple[bytes | str, Fields]]:
        """One XAUTOCLAIM step; the cursor walks the whole pending list over successive calls."""
        reply = await self._redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self._claim_idle_ms,
            start_id=self._claim_cursor,
            count=self._batch,
        )
        self._claim_cursor = _text(reply[0])
        claimed: list[tuple[bytes | str, Fields]] = []
        for entry_id, fields in reply[1]:
            if fields is None:  # trimmed from the stream while pending (Redis 6.2 reports it)
                await self._redis.xack(self.stream, self.group, entry_id)
            else:
                claimed.append((entry_id, fields))
        self.stats.redelivered += len(claimed)
        return claimed

    async def _handle(self, entry_id: str, fields: Fields) -> bool:
        """Start the entry's run and acknowledge it; False when the start failed transiently."""
        try:
            inputs = self._inputs(fields)
            await self._starter.start(
                self._workflow,
                inputs,
                trigger=f"redis:{self.stream}",
                dedupe_key=f"redis:{self.stream}:{entry_id}",
            )
        except _PoisonError as exc:
            await self._reject(entry_id, fields, str(exc))
            return True
        except Exception as exc:  # the starter's failures are its own; sorted just below
            if _is_refusal(exc):
                await self._reject(entry_id, fields, f"refused by the starter: {exc}")
                return True
            self.stats.failed += 1
            logger.warning(
                "redis stream %r: starting a run for %s failed, left pending for retry: %r",
                self.stream,
                entry_id,
                exc,
            )
            return False
        await self._redis.xack(self.stream, self.group, entry_id)
        self.stats.started += 1
        return True

    def _inputs(self, fields: Fields) -> dict[str, Any]:
        texts = {_text(name): _text(value) for name, value in fields.items()}
        if self._inputs_field in texts:
            return _json_object(texts[self._inputs_field])
        return dict(texts)

    async def _reject(self, entry_id: str, fields: Fields, reason: str) -> None:
        logger.warning(
            "redis stream %r: rejected poison entry %s: %s", self.stream, entry_id, reason
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            if self.dead_stream is not None:
                dead: dict[FieldT, EncodableT] = {name: value for name, value in fields.items()}
                dead.update({"dead_reason": reason, "dead_entry_id": entry_id})
                pipe.xadd(self.dead_stream, dead, maxlen=_DEAD_STREAM_MAXLEN, approximate=True)
            pipe.xack(self.stream, self.group, entry_id)
            await pipe.execute()
        self.stats.rejected += 1


def _stream_entries(reply: Any) -> list[tuple[bytes | str, Fields]]:
    """The entries of a one-stream XREADGROUP reply, in RESP2 (list) or RESP3 (map) shape."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _, entries in reply)
    return [(entry_id, fields) for entries in streams for entry_id, fields in entries]


class RabbitQueueTrigger:
    """Starts ``workflow`` for each message of a RabbitMQ queue; the body is the inputs, a JSON
    object.

    The run's dedupe key is ``amqp:<queue>:<message_id>``; publishers should set the AMQP
    ``message_id`` property, because without it the key is the sha256 of the body, and two
    distinct messages with identical bodies then start one run. A transient start failure nacks
    the message back onto the queue after ``requeue_delay_s``; poison is rejected without requeue,
    so a queue declared with a dead-letter exchange (``queue_arguments``) keeps it there.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        workflow: str,
        starter: RunStarter,
        *,
        prefetch: int = 100,
        durable: bool = True,
        queue_arguments: Mapping[str, Any] | None = None,
        requeue_delay_s: float = 1.0,
    ) -> None:
        self._url = url
        self.queue = queue
        self._workflow = workflow
        self._starter = starter
        self._prefetch = prefetch
        self._durable = durable
        self._queue_arguments = dict(queue_arguments or {})
        self._requeue_delay_s = requeue_delay_s
        self.stats = TriggerStats()
        self._connection: AbstractRobustConnection | None = None

    async def run(self) -> None:
        """Consume until cancelled or closed; the connection reconnects by itself."""
        self._connection = await aio_pika.connect_robust(self._url)
        try:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            queue = await channel.declare_queue(
                self.queue, durable=self._durable, arguments=self._queue_arguments or None
            )
            async with queue.iterator() as messages:
                async for message in messages:
                    await self._handle(message)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the connection; messages received but not acknowledged go back to the queue."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        if message.redelivered:
            self.stats.redelivered += 1
        identity = message.message_id or hashlib.sha256(message.body).hexdigest()
        try:
            inputs = _json_object(message.body)
            await self._starter.start(
                self._workflow,
                inputs,
                trigger=f"amqp:{self.queue}",
                dedupe_key=f"amqp:{self.queue}:{identity}",
            )
        except _PoisonError as exc:
            await self._settle(message, "reject", f"rejected poison message {identity}: {exc}")
            return
        except Exception as exc:  # the starter's failures are its own; sorted just below
            if _is_refusal(exc):
                await self._settle(message, "reject", f"starter refused message {identity}: {exc}")
                return
            self.stats.failed += 1
            logger.warning(
                "amqp queue %r: starting a run for %s failed, requeued: %r",
                self.queue,
                identity,
                exc,
            )
            # Holding the message a moment keeps a broken starter from spinning the redeliveries.
            await asyncio.sleep(self._requeue_delay_s)
            await self._settle(message, "nack", None)
            return
        await self._settle(message, "ack", None)

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        how: Literal["ack", "nack", "reject"],
        reason: str | None,
    ) -> None:
        """Ack, nack (requeue) or reject (no requeue) ``message``, and count it."""
        if reason is not None:
            logger.warning("amqp queue %r: %s", self.queue, reason)
        try:
            if how == "ack":
                await message.ack()
            elif how == "nack":
                await message.nack(requeue=True)
            else:
                await message.reject(requeue=False)
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            # The channel is gone; the broker redelivers the message, and the dedupe key holds.
            logger.warning("amqp queue %r: could not %s a message: %r", self.queue, how, exc)
            return
        if how == "ack":
            self.stats.started += 1
        elif how == "reject":
            self.stats.rejected += 1
