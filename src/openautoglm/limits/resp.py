"""A lean, pipelined Redis client for the rate limiter's two Lua scripts.

redis-py spends 110-180 µs of CPU per EVALSHA here (connection pool, per-call timeout task,
generic parsing) — more than the whole rest of a gateway request. The limiter needs only
EVALSHA (falling back to EVAL once per script after ``NOSCRIPT``) over one connection, so this
client writes each command straight to the socket and matches replies to callers in order
(RESP is ordered per connection): concurrent requests share the connection without waiting for
each other's round trips.

Failures raise redis-py's own ``ConnectionError`` / ``TimeoutError`` / ``ResponseError`` so the
fallback limiter treats both clients alike. A reply that takes longer than ``timeout_s`` closes
the connection (failing every call in flight on it); the next call reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlparse

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_INCOMPLETE = object()


def encode_command(*parts: bytes | str | int) -> bytes:
    """One RESP2 array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def parse_reply(buffer: bytes, start: int = 0) -> tuple[Any, int]:
    """One reply from ``buffer[start:]``: ``(value, end)``, or ``(_INCOMPLETE, start)``.

    Error replies come back as ``ResponseError`` instances (raised later, by the caller).
    """
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return _INCOMPLETE, start
    kind, line, after = buffer[start : start + 1], buffer[start + 1 : line_end], line_end + 2
    if kind == b"+":
        return line, after
    if kind == b"-":
        message = line.decode(errors="replace")
        error = NoScriptError if message.startswith("NOSCRIPT") else ResponseError
        return error(message), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return _INCOMPLETE, start
        return buffer[after : after + size], after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items, position = [], after
        for _ in range(count):
            item, position = parse_reply(buffer, position)
            if item is _INCOMPLETE:
                return _INCOMPLETE, start
            items.append(item)
        return items, position
    raise RedisConnectionError(f"unexpected byte {kind!r} in a Redis reply")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.buffer = b""
        self.outgoing: list[bytes] = []

    def queue(self, command: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Send ``command`` with the others queued in this loop iteration (one syscall)."""
        if not self.outgoing:
            loop.call_soon(self.flush)
        self.outgoing.append(command)

    def flush(self) -> None:
        if self.outgoing and self.transport is not None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they quack alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        position = 0
        while self.waiters:
            value, end = parse_reply(self.buffer, position)
            if value is _INCOMPLETE:
                break
            position = end
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(value)
        self.buffer = self.buffer[position:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class LeanScript:
    """A Lua script callable as ``await script(keys=[...], args=[...])``, like redis-py's."""

    def __init__(self, client: LeanRedis, source: str) -> None:
        self._client = client
        self._source = source.encode()
        self._sha = hashlib.sha1(self._source).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await self._client.call("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            # First use on this server (or after SCRIPT FLUSH): EVAL also caches the script.
            return await self._client.call("EVAL", self._source, len(keys), *keys, *args)


class LeanRedis:
    """One pipelined connection to Redis, opened on first use and reopened after failures."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        username: str | None = None,
        timeout_s: float = 0.5,
    ) -> None:
        self._address = (host, port)
        self._setup = [encode_command("SELECT", db)] if db else []
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self._setup.insert(0, encode_command(*auth))
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 0.5) -> LeanRedis:
        """``redis://[[user]:password@]host[:port][/db]``."""
        parsed = urlparse(url)
        if parsed.scheme != "redis":
            raise ValueError(f"only redis:// URLs are supported here, not {parsed.scheme}://")
        db = int(parsed.path.lstrip("/") or 0)
        password = unquote(parsed.password) if parsed.password else None
        return cls(
            parsed.hostname or "127.0.0.1",
            parsed.port or 6379,
            db,
            password,
            unquote(parsed.username) if parsed.username else None,
            timeout_s,
        )

    def register_script(self, source: str) -> LeanScript:
        return LeanScript(self, source)

    async def call(self, *parts: bytes | str | int) -> Any:
        """Send one command and wait for its reply (other calls may be in flight meanwhile)."""
        protocol = self._protocol if self._protocol and self._protocol.transport else None
        if protocol is None:
            protocol = await self._connect()
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        protocol.waiters.append(waiter)
        protocol.queue(encode_command(*parts), loop)
        timer = loop.call_later(self._timeout_s, self._expire, protocol, waiter)
        try:
            reply = await waiter
        finally:
            timer.cancel()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _expire(self, protocol: _Protocol, waiter: asyncio.Future[Any]) -> None:
        if waiter.done():
            return
        # Replies are ordered: a late one would be matched to the wrong caller. Start over.
        protocol.fail(RedisTimeoutError(f"Redis did not answer within {self._timeout_s} s"))
        if protocol.transport is not None:
            protocol.transport.abort()

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and self._protocol.transport is not None:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                transport, protocol = await asyncio.wait_for(
                    loop.create_connection(_Protocol, *self._address), self._timeout_s
                )
                # uvloop calls connection_made only after create_connection has returned.
                protocol.transport = transport
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(
                    f"cannot connect to Redis at {self._address}: {exc}"
                ) from exc
            for command in self._setup:
                reply = await self._send_setup(protocol, command)
                if isinstance(reply, ResponseError):
                    if protocol.transport is not None:
                        protocol.transport.abort()
                    raise reply
            self._protocol = protocol
            return protocol

    async def _send_setup(self, protocol: _Protocol, command: bytes) -> Any:
        assert protocol.transport is not None
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.waiters.append(waiter)
        protocol.transport.write(command)
        try:
            return await asyncio.wait_for(waiter, self._timeout_s)
        except TimeoutError as exc:
            protocol.transport.abort()
            raise RedisTimeoutError("Redis did not answer the connection setup") from exc

    async def aclose(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
