"""The lean pipelined Redis client: RESP parsing, pipelining, script cache misses, failures."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tests.unit.limits.redis_support import REDIS_URL, RedisForTest, ensure_redis

from openautoglm.limits.resp import LeanRedis, encode_command, parse_reply


def test_encode_and_parse_round_trip() -> None:
    assert encode_command("GET", "k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert encode_command("X", 12, b"\x00") == b"*3\r\n$1\r\nX\r\n$2\r\n12\r\n$1\r\n\x00\r\n"
    reply = b"*3\r\n:1\r\n$2\r\nhi\r\n*2\r\n+OK\r\n$-1\r\n"
    assert parse_reply(reply) == ([1, b"hi", [b"OK", None]], len(reply))
    for cut in range(1, len(reply)):  # every prefix is incomplete, never a wrong value
        value, end = parse_reply(reply[:cut])
        assert end == 0 and value is not None and not isinstance(value, list | int | bytes)
    error, _ = parse_reply(b"-NOSCRIPT No matching script\r\n")
    assert isinstance(error, NoScriptError)
    other, _ = parse_reply(b"-ERR wrong\r\n")
    assert isinstance(other, ResponseError) and not isinstance(other, NoScriptError)


async def test_pipelined_calls_get_their_own_replies(redis_for_test: RedisForTest) -> None:
    client = LeanRedis.from_url(REDIS_URL)
    try:
        prefix = redis_for_test.prefix
        await asyncio.gather(*(client.call("SET", f"{prefix}{i}", i) for i in range(200)))
        values = await asyncio.gather(*(client.call("GET", f"{prefix}{i}") for i in range(200)))
        assert values == [str(i).encode() for i in range(200)]
        script = client.register_script("return {KEYS[1], ARGV[1]}")
        await client.call("SCRIPT", "FLUSH")  # the first EVALSHA misses, EVAL recovers
        assert await script(keys=[f"{prefix}k"], args=[7]) == [f"{prefix}k".encode(), b"7"]
        with pytest.raises(ResponseError):
            await client.call("NOT-A-COMMAND")
        assert await client.call("PING") == b"PONG", "an error reply must not break the stream"
    finally:
        await client.aclose()


async def test_unreachable_redis_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LeanRedis(port=port, timeout_s=0.5)
    with pytest.raises(RedisConnectionError):
        await client.call("PING")


async def test_a_silent_server_times_out_and_the_client_reconnects() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = LeanRedis(port=port, timeout_s=0.2)
    try:
        calls = [asyncio.ensure_future(client.call("PING")) for _ in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError | RedisConnectionError) for r in results)
        with pytest.raises(RedisTimeoutError):
            await client.call("PING")
        assert len(accepted) == 2, "a timed-out connection is dropped and a new one opened"
    finally:
        await client.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


def test_works_on_uvloop_as_the_server_runs_it(redis_url_checked: str) -> None:
    """uvloop calls connection_made late and its transports are not asyncio.Transport."""

    async def main() -> list[object]:
        client = LeanRedis.from_url(redis_url_checked)
        try:
            script = client.register_script("return ARGV[1]")
            return list(await asyncio.gather(client.call("PING"), script(keys=[], args=["x"])))
        finally:
            await client.aclose()

    assert uvloop.run(main()) == [b"PONG", b"x"]


@pytest.fixture
def redis_url_checked() -> str:
    asyncio.run(ensure_redis())
    return REDIS_URL
