"""Task runners: one attempt of an ``llm``, ``http`` or ``python`` task.

``llm`` runs against a fake gateway that records its calls; ``http`` against a real aiohttp
server on a free 127.0.0.1 port; ``python`` against functions defined in this module, imported
by their path like any task's callable.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from openautoglm.core.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    OpenAutoGLMError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from openautoglm.workflows import runners
from openautoglm.workflows.context import TaskContext, TaskFailure
from openautoglm.workflows.runners import TaskRunners

THIS_MODULE = "tests.unit.workflows.test_runners"


def make_context(**overrides: Any) -> TaskContext:
    values: dict[str, Any] = {
        "run_id": "run-1",
        "task_id": "step",
        "attempt": 1,
        "idempotency_key": "run-1/step",
        "inputs": {"topic": "长城", "n": 3},
        "upstream": {"fetch": {"title": "万里长城", "words": 120}},
    }
    values.update(overrides)
    return TaskContext(**values)


async def failure_of(
    runner: TaskRunners, task_type: str, config: Mapping[str, Any], **context: Any
) -> TaskFailure:
    with pytest.raises(TaskFailure) as caught:
        await runner.run(task_type, config, make_context(**context))
    return caught.value


# -- context ------------------------------------------------------------------------------------


def test_variables_expose_inputs_upstream_outputs_item_and_run() -> None:
    context = make_context(item={"city": "北京"}, index=2)

    assert context.variables() == {
        "inputs": {"topic": "长城", "n": 3},
        "tasks": {"fetch": {"output": {"title": "万里长城", "words": 120}}},
        "item": {"city": "北京"},
        "index": 2,
        "run": {"id": "run-1"},
    }


async def test_an_unknown_task_type_is_not_retryable() -> None:
    failure = await failure_of(TaskRunners(), "shell", {})

    assert (failure.error_class, failure.retryable) == ("error", False)


async def test_a_broken_template_is_a_template_failure() -> None:
    failure = await failure_of(TaskRunners(FakeLlm()), "llm", {"model": "m", "prompt": "{{ oops"})

    assert (failure.error_class, failure.retryable) == ("template", False)


# -- llm ----------------------------------------------------------------------------------------


@dataclass
class FakeLlm:
    """Records every call; raises ``error`` when set, else answers with ``reply``."""

    reply: str = "好的"
    error: OpenAutoGLMError | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None,
        temperature: float | None,
        idempotency_key: str,
    ) -> Mapping[str, Any]:
        self.calls.append(
            {
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "idempotency_key": idempotency_key,
            }
        )
        if self.error is not None:
            raise self.error
        usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
        return {"text": self.reply, "usage": usage, "model": model, "version": "v3"}


async def test_llm_renders_the_prompt_over_inputs_and_upstream_outputs() -> None:
    llm = FakeLlm()
    config = {
        "model": "glm-4",
        "system": "你是导游。",
        "prompt": "介绍{{ inputs.topic }}：{{ tasks.fetch.output.title }}，{{ inputs.n }}句话。",
        "max_tokens": 64,
        "temperature": 0.2,
    }

    output = await TaskRunners(llm).run("llm", config, make_context())

    assert output == {
        "text": "好的",
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        "model": "glm-4",
        "version": "v3",
    }
    assert llm.calls == [
        {
            "model": "glm-4",
            "messages": [
                {"role": "system", "content": "你是导游。"},
                {"role": "user", "content": "介绍长城：万里长城，3句话。"},
            ],
            "max_tokens": 64,
            "temperature": 0.2,
            "idempotency_key": "run-1/step",
        }
    ]


async def test_llm_messages_are_rendered_and_follow_the_system_message() -> None:
    llm = FakeLlm()
    config = {
        "model": "glm-{{ inputs.n }}",
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Topic: {{ inputs.topic }}"},
            {"role": "assistant", "content": "OK"},
            {"role": "user", "content": "{{ tasks.fetch.output }}"},
        ],
    }

    await TaskRunners(llm).run("llm", config, make_context())

    assert llm.calls[0]["model"] == "glm-3"
    assert llm.calls[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Topic: 长城"},
        {"role": "assistant", "content": "OK"},
        {"role": "user", "content": '{"title": "万里长城", "words": 120}'},
    ]
    assert (llm.calls[0]["max_tokens"], llm.calls[0]["temperature"]) == (None, None)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (RateLimitError("slow down"), True),
        (UpstreamError("upstream 502"), True),
        (ServiceUnavailableError("no instance"), True),
        (InvalidRequestError("bad field"), False),
        (PermissionDeniedError("policy says no", code="policy_violation"), False),
        (ModelNotFoundError("no such model"), False),
    ],
)
async def test_llm_errors_are_retryable_only_for_429_and_5xx(
    error: OpenAutoGLMError, retryable: bool
) -> None:
    runner = TaskRunners(FakeLlm(error=error))

    failure = await failure_of(runner, "llm", {"model": "m", "prompt": "hi"})

    assert (failure.error_class, failure.retryable) == ("llm", retryable)
    assert failure.message == f"{error.code}: {error.message}"


async def test_llm_without_a_gateway_is_not_retryable() -> None:
    failure = await failure_of(TaskRunners(), "llm", {"model": "m", "prompt": "hi"})

    assert (failure.error_class, failure.retryable) == ("llm", False)


@pytest.mark.parametrize(
    "config",
    [
        {"model": "m"},
        {"model": "m", "prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"prompt": "a"},
        {"model": "m", "messages": [{"content": "no role"}]},
        {"model": "m", "prompt": "a", "max_tokens": "many"},
    ],
)
async def test_llm_refuses_a_malformed_config_without_calling(config: dict[str, Any]) -> None:
    llm = FakeLlm()

    failure = await failure_of(TaskRunners(llm), "llm", config)

    assert (failure.error_class, failure.retryable, llm.calls) == ("llm", False, [])


# -- http ---------------------------------------------------------------------------------------


REQUESTS = web.AppKey("requests", list[dict[str, Any]])


@dataclass
class Server:
    base_url: str
    requests: list[dict[str, Any]]


async def _record(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[REQUESTS].append(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": dict(request.headers),
            "body": body.decode(),
        }
    )
    return web.json_response({"ok": True, "说": "你好"}, status=201)


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="nope")


async def _text(request: web.Request) -> web.Response:
    return web.Response(text="plain 文本", charset="utf-8")


async def _big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * 2000, content_type="application/octet-stream")


async def _big_chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(4):
        await response.write(b"y" * 500)
    await response.write_eof()
    return response


async def _hang(request: web.Request) -> web.Response:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    app = web.Application()
    app[REQUESTS] = []
    app.router.add_route("*", "/echo/{name}", _record)
    app.router.add_get("/status/{code}", _status)
    app.router.add_get("/text", _text)
    app.router.add_get("/big", _big)
    app.router.add_get("/big-chunked", _big_chunked)
    app.router.add_get("/hang", _hang)
    app_runner = web.AppRunner(app, shutdown_timeout=0.1)
    await app_runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        port = sock.getsockname()[1]
        site = web.SockSite(app_runner, sock)
        await site.start()
        try:
            yield Server(f"http://127.0.0.1:{port}", app[REQUESTS])
        finally:
            await app_runner.cleanup()


@pytest_asyncio.fixture
async def http_runner() -> AsyncIterator[TaskRunners]:
    runner = TaskRunners()
    yield runner
    await runner.close()


async def test_http_sends_method_json_body_idempotency_key_and_templated_url(
    server: Server, http_runner: TaskRunners
) -> None:
    config = {
        "url": server.base_url + "/echo/{{ inputs.n }}?q={{ tasks.fetch.output.words }}",
        "method": "post",
        "headers": {"X-Topic": "{{ run.id }}", "idempotency-key": "ignored"},
        "json": {"topic": "{{ inputs.topic }}", "n": "{{ inputs.n }}"},
        "expect_status": [201],
    }

    output = await http_runner.run("http", config, make_context())

    assert output == {
        "status": 201,
        "headers": {"content-type": "application/json; charset=utf-8"},
        "json": {"ok": True, "说": "你好"},
    }
    [request] = server.requests
    assert (request["method"], request["path"]) == ("POST", "/echo/3?q=120")
    assert request["headers"]["Idempotency-Key"] == "run-1/step"
    assert request["headers"]["X-Topic"] == "run-1"
    assert json.loads(request["body"]) == {"topic": "长城", "n": 3}


async def test_http_sends_a_text_body(server: Server, http_runner: TaskRunners) -> None:
    config = {
        "url": server.base_url + "/echo/a",
        "method": "PUT",
        "body": "话题={{ inputs.topic }}",
    }

    output = await http_runner.run("http", config, make_context())

    assert output["status"] == 201
    assert [(r["method"], r["body"]) for r in server.requests] == [("PUT", "话题=长城")]


async def test_http_returns_text_for_a_non_json_response(
    server: Server, http_runner: TaskRunners
) -> None:
    output = await http_runner.run("http", {"url": server.base_url + "/text"}, make_context())

    assert output == {
        "status": 200,
        "headers": {"content-type": "text/plain; charset=utf-8"},
        "text": "plain 文本",
    }


@pytest.mark.parametrize(
    ("code", "retryable"), [(500, True), (503, True), (429, True), (408, True), (404, False)]
)
async def test_http_unexpected_status_is_retryable_for_5xx_429_408(
    server: Server, http_runner: TaskRunners, code: int, retryable: bool
) -> None:
    failure = await failure_of(http_runner, "http", {"url": f"{server.base_url}/status/{code}"})

    assert (failure.error_class, failure.retryable) == ("http", retryable)
    assert failure.message == f"unexpected status {code}: nope"


async def test_http_expect_status_accepts_listed_and_refuses_others(
    server: Server, http_runner: TaskRunners
) -> None:
    url = server.base_url + "/status/404"
    accepted = await http_runner.run("http", {"url": url, "expect_status": [404]}, make_context())
    refused = await failure_of(http_runner, "http", {"url": url, "expect_status": [200]})
    unlisted = await failure_of(
        http_runner, "http", {"url": server.base_url + "/text", "expect_status": [204]}
    )

    assert accepted == {
        "status": 404,
        "headers": {"content-type": "text/plain; charset=utf-8"},
        "text": "nope",
    }
    assert (refused.error_class, refused.retryable) == ("http", False)
    assert unlisted.message.startswith("unexpected status 200")


async def test_http_connection_refused_is_retryable(http_runner: TaskRunners) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    failure = await failure_of(http_runner, "http", {"url": f"http://127.0.0.1:{port}/"})

    assert (failure.error_class, failure.retryable) == ("http", True)
    assert "ConnectError" in failure.message


async def test_http_refuses_a_body_over_the_cap(
    server: Server, http_runner: TaskRunners, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runners, "MAX_RESPONSE_BYTES", 1000)

    declared = await failure_of(http_runner, "http", {"url": server.base_url + "/big"})
    streamed = await failure_of(http_runner, "http", {"url": server.base_url + "/big-chunked"})
    monkeypatch.setattr(runners, "MAX_RESPONSE_BYTES", 2000)
    at_cap = await http_runner.run(
        "http", {"url": server.base_url + "/big-chunked"}, make_context()
    )

    for failure in (declared, streamed):
        assert (failure.error_class, failure.retryable) == ("http", False)
        assert failure.message == "response body is larger than the 1000 byte limit"
    assert at_cap["text"] == "y" * 2000


async def test_http_uses_the_deadline_as_its_timeout(server: Server) -> None:
    runner = TaskRunners(clock=lambda: 100.0)
    try:
        timed_out = await failure_of(
            runner, "http", {"url": server.base_url + "/hang"}, deadline=100.05
        )
        too_late = await failure_of(
            runner, "http", {"url": server.base_url + "/text"}, deadline=99.0
        )
    finally:
        await runner.close()

    assert (timed_out.error_class, timed_out.retryable) == ("timeout", True)
    assert (too_late.error_class, too_late.retryable) == ("timeout", True)


async def test_http_refuses_a_bad_url(http_runner: TaskRunners) -> None:
    failure = await failure_of(http_runner, "http", {"url": "ftp://127.0.0.1/x"})

    assert (failure.error_class, failure.retryable) == ("http", False)


async def test_http_uses_and_keeps_a_given_client(server: Server) -> None:
    async with httpx.AsyncClient() as client:
        runner = TaskRunners(http=client)
        await runner.run("http", {"url": server.base_url + "/text"}, make_context())
        await runner.close()

        assert not client.is_closed


# -- python -------------------------------------------------------------------------------------


def add(ctx: TaskContext, a: int, b: int) -> dict[str, Any]:
    return {"sum": a + b, "key": ctx.idempotency_key, "attempt": ctx.attempt}


async def greet(ctx: TaskContext, name: str) -> str:
    await asyncio.sleep(0)
    return f"你好, {name} ({ctx.task_id})"


def thread_ident(ctx: TaskContext) -> int:
    return threading.get_ident()


def returns_a_set(ctx: TaskContext) -> set[int]:
    return {1, 2}


def boom(ctx: TaskContext) -> None:
    raise KeyError("missing")


def refuse(ctx: TaskContext) -> None:
    raise TaskFailure("quota spent", "python", retryable=False)


async def wait_forever(ctx: TaskContext) -> None:
    ctx.log("started")
    await asyncio.Event().wait()


NOT_CALLABLE = 42


async def test_python_calls_a_sync_function_with_rendered_args() -> None:
    config = {
        "callable": f"{THIS_MODULE}:add",
        "args": {"a": "{{ inputs.n }}", "b": "{{ tasks.fetch.output.words }}"},
    }

    output = await TaskRunners().run("python", config, make_context(attempt=2))

    assert output == {"sum": 123, "key": "run-1/step", "attempt": 2}


async def test_python_awaits_an_async_function() -> None:
    config = {"callable": f"{THIS_MODULE}:greet", "args": {"name": "{{ inputs.topic }}"}}

    assert await TaskRunners().run("python", config, make_context()) == "你好, 长城 (step)"


async def test_python_runs_a_sync_function_off_the_event_loop_thread() -> None:
    config = {"callable": f"{THIS_MODULE}:thread_ident"}

    ident = await TaskRunners().run("python", config, make_context())

    assert ident != threading.get_ident()


async def test_python_refuses_a_non_json_return() -> None:
    failure = await failure_of(
        TaskRunners(), "python", {"callable": f"{THIS_MODULE}:returns_a_set"}
    )

    assert (failure.error_class, failure.retryable) == ("python", False)
    assert "set" in failure.message


async def test_python_exception_is_a_retryable_failure_naming_its_type() -> None:
    failure = await failure_of(TaskRunners(), "python", {"callable": f"{THIS_MODULE}:boom"})

    assert (failure.error_class, failure.retryable) == ("python", True)
    assert failure.message == f"{THIS_MODULE}:boom raised KeyError: 'missing'"


async def test_python_task_failure_passes_through_unchanged() -> None:
    failure = await failure_of(TaskRunners(), "python", {"callable": f"{THIS_MODULE}:refuse"})

    assert (failure.message, failure.error_class, failure.retryable) == (
        "quota spent",
        "python",
        False,
    )


@pytest.mark.parametrize(
    "path",
    [
        "no_such_package.module:fn",
        f"{THIS_MODULE}:no_such_function",
        f"{THIS_MODULE}:NOT_CALLABLE",
        "no_colon_here",
    ],
)
async def test_python_bad_callable_is_not_retryable(path: str) -> None:
    failure = await failure_of(TaskRunners(), "python", {"callable": path})

    assert (failure.error_class, failure.retryable) == ("python", False)
    assert path in failure.message


@pytest.mark.parametrize("args", [{"a": 1}, {"a": 1, "b": 2, "c": 3}])
async def test_python_args_the_function_cannot_take_are_not_retryable(
    args: dict[str, Any],
) -> None:
    config = {"callable": f"{THIS_MODULE}:add", "args": args}

    failure = await failure_of(TaskRunners(), "python", config)

    assert (failure.error_class, failure.retryable) == ("python", False)
    assert failure.message.startswith(f"{THIS_MODULE}:add cannot take these args: ")


async def test_python_cancellation_propagates() -> None:
    started = asyncio.Event()
    context = make_context(log=lambda line: started.set() if line == "started" else None)
    task = asyncio.create_task(
        TaskRunners().run("python", {"callable": f"{THIS_MODULE}:wait_forever"}, context)
    )
    await asyncio.wait_for(started.wait(), timeout=2)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
