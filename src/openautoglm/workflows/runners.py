"""Task runners: how one attempt of an ``llm``, ``http`` or ``python`` task executes.

The executor hands :meth:`TaskRunners.run` a task's type-specific configuration (still holding
its templates) and a :class:`TaskContext`; the runner renders the configuration against the
context's variables, performs the attempt and returns its output, a JSON-serialisable value.

Invariant: an attempt either returns an output or raises :class:`TaskFailure`, which says whether
another attempt could succeed; cancellation always propagates, and anything else that escapes is
a bug (an ``LlmCaller`` raising outside the error tree), not a task's failure. Timeouts are the
executor's: it wraps ``run`` in ``asyncio.timeout``. Every HTTP request carries the task's
idempotency key, and ``python`` tasks receive the context, so an attempt retried after a crash
can make its side effects only once.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx

from openautoglm.core.errors import OpenAutoGLMError
from openautoglm.workflows.context import LlmCaller, TaskContext, TaskFailure
from openautoglm.workflows.templates import TemplateError, render_value

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_HTTP_TIMEOUT_S = 60.0
_ERROR_SNIPPET_BYTES = 512
_RETRYABLE_HTTP_STATUSES = frozenset({408, 425, 429})

_NOT_JSON = object()
_N = TypeVar("_N", int, float)


class TaskRunners:
    """Runs one attempt of a task of any type; owns the HTTP client unless one is given."""

    def __init__(
        self,
        llm: LlmCaller | None = None,
        http: httpx.AsyncClient | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._llm = llm
        self._http = http
        self._owns_http = http is None
        self._clock = clock
        self._callables: dict[str, Callable[..., Any]] = {}
        self._runners: dict[str, Callable[[Mapping[str, Any], TaskContext], Awaitable[Any]]] = {
            "llm": self._run_llm,
            "http": self._run_http,
            "python": self._run_python,
        }

    async def run(self, task_type: str, config: Mapping[str, Any], context: TaskContext) -> Any:
        """Render ``config`` against the context, run one attempt, and return its output."""
        runner = self._runners.get(task_type)
        if runner is None:
            raise TaskFailure(f"unknown task type {task_type!r}", "error", retryable=False)
        try:
            rendered = render_value(dict(config), context.variables())
        except TemplateError as exc:
            raise TaskFailure(f"template error: {exc}", "template", retryable=False) from exc
        if not isinstance(rendered, Mapping):
            raise TaskFailure("the task configuration must be a mapping", "template", False)
        return await runner(rendered, context)

    async def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- llm ------------------------------------------------------------------------------------

    async def _run_llm(self, config: Mapping[str, Any], context: TaskContext) -> Any:
        if self._llm is None:
            raise TaskFailure("no LLM gateway is configured for llm tasks", "llm", retryable=False)
        model = config.get("model")
        if not isinstance(model, str) or not model:
            raise TaskFailure("llm task needs a model name", "llm", retryable=False)
        messages = _chat_messages(config)
        max_tokens = _optional_number(config, "max_tokens", int)
        temperature = _optional_number(config, "temperature", float)
        context.log(f"llm: model {model}, {len(messages)} message(s)")
        try:
            result = await self._llm(
                model,
                messages,
                max_tokens=max_tokens,
                temperature=temperature,
                idempotency_key=context.idempotency_key,
            )
        except OpenAutoGLMError as exc:
            retryable = exc.status == 429 or exc.status >= 500
            raise TaskFailure(f"{exc.code}: {exc.message}", "llm", retryable) from exc
        return dict(result)

    # -- http -----------------------------------------------------------------------------------

    async def _run_http(self, config: Mapping[str, Any], context: TaskContext) -> Any:
        url = config.get("url")
        if not isinstance(url, str) or not url:
            raise TaskFailure("http task needs a url", "http", retryable=False)
        method = str(config.get("method") or "GET").upper()
        headers = _request_headers(config.get("headers"), context.idempotency_key)
        expected = _expected_statuses(config.get("expect_status"))
        if config.get("json") is not None and config.get("body") is not None:
            raise TaskFailure("http task sets both json and body", "http", retryable=False)
        content = None if config.get("body") is None else _as_text(config["body"])
        timeout_s = self._timeout_s(context)
        context.log(f"http: {method} {url}")
        try:
            async with self._client().stream(
                method,
                url,
                headers=headers,
                json=config.get("json"),
                content=content,
                timeout=timeout_s,
            ) as response:
                output = await _read_response(response, expected)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL, UnicodeEncodeError) as exc:
            message = f"cannot send {method} {url}: {type(exc).__name__}: {exc}"
            raise TaskFailure(message, "http", retryable=False) from exc
        except httpx.TimeoutException as exc:
            raise TaskFailure(
                f"{method} {url} timed out after {timeout_s:.1f}s", "timeout"
            ) from exc
        except httpx.RequestError as exc:
            raise TaskFailure(
                f"{method} {url} failed: {type(exc).__name__}: {exc}", "http"
            ) from exc
        context.log(f"http: {method} {url} -> {output['status']}")
        return output

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    def _timeout_s(self, context: TaskContext) -> float:
        if context.deadline is None:
            return DEFAULT_HTTP_TIMEOUT_S
        remaining_s = context.deadline - self._clock()
        if remaining_s <= 0:
            raise TaskFailure("the task's deadline passed before the request", "timeout")
        return remaining_s

    # -- python ---------------------------------------------------------------------------------

    async def _run_python(self, config: Mapping[str, Any], context: TaskContext) -> Any:
        path = config.get("callable")
        if not isinstance(path, str) or not path:
            raise TaskFailure("python task needs a callable", "python", retryable=False)
        args = config.get("args") or {}
        if not isinstance(args, Mapping) or not all(isinstance(key, str) for key in args):
            raise TaskFailure("python task args must be a mapping by name", "python", False)
        fn = self._load(path)
        _check_arguments(path, fn, context, args)
        context.log(f"python: {path}")
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(context, **args)
            else:
                # A sync function would block every other task on the loop; give it a thread.
                result = await asyncio.to_thread(fn, context, **args)
                if inspect.isawaitable(result):
                    result = await result
        except TaskFailure:
            raise
        except Exception as exc:
            message = f"{path} raised {type(exc).__name__}: {exc}"
            raise TaskFailure(message, "python", retryable=True) from exc
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            message = f"{path} returned a {type(result).__name__} that is not JSON: {exc}"
            raise TaskFailure(message, "python", retryable=False) from exc
        return result

    def _load(self, path: str) -> Callable[..., Any]:
        cached = self._callables.get(path)
        if cached is not None:
            return cached
        module_name, _, attribute = path.partition(":")
        if not module_name or not attribute:
            message = f"callable {path!r} is not of the form 'package.module:function'"
            raise TaskFailure(message, "python", retryable=False)
        try:
            target: Any = importlib.import_module(module_name)
            for name in attribute.split("."):
                target = getattr(target, name)
        except Exception as exc:
            # An import can fail with anything its module raises; none of it heals on retry.
            message = f"cannot import {path!r}: {type(exc).__name__}: {exc}"
            raise TaskFailure(message, "python", retryable=False) from exc
        if not callable(target):
            raise TaskFailure(f"{path!r} is not callable", "python", retryable=False)
        loaded: Callable[..., Any] = target
        self._callables[path] = loaded
        return loaded


def _check_arguments(
    path: str, fn: Callable[..., Any], context: TaskContext, args: Mapping[str, Any]
) -> None:
    """Refuse arguments the function cannot take, before a call that no retry could fix."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some builtins have no signature; let the call itself decide
    try:
        signature.bind(context, **args)
    except TypeError as exc:
        raise TaskFailure(f"{path} cannot take these args: {exc}", "python", False) from exc


def _as_text(value: Any) -> str:
    """A rendered value as text: a single ``{{ expr }}`` may have yielded a native value."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _chat_messages(config: Mapping[str, Any]) -> list[dict[str, str]]:
    prompt, messages = config.get("prompt"), config.get("messages")
    if (prompt is None) == (messages is None):
        raise TaskFailure("llm task needs exactly one of prompt and messages", "llm", False)
    chat: list[dict[str, str]] = []
    if config.get("system") is not None:
        chat.append({"role": "system", "content": _as_text(config["system"])})
    if prompt is not None:
        chat.append({"role": "user", "content": _as_text(prompt)})
        return chat
    if not isinstance(messages, list) or not messages:
        raise TaskFailure("llm task messages must be a non-empty list", "llm", retryable=False)
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise TaskFailure("each llm message needs a role and content", "llm", False)
        content = message.get("content")
        chat.append(
            {"role": message["role"], "content": "" if content is None else _as_text(content)}
        )
    return chat


def _optional_number(config: Mapping[str, Any], key: str, kind: Callable[[Any], _N]) -> _N | None:
    """A numeric setting; a template may have rendered it as text, so ``"0.2"`` counts."""
    value = config.get(key)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError(key)
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise TaskFailure(f"llm task {key} must be a number", "llm", retryable=False) from exc


def _request_headers(headers: Any, idempotency_key: str) -> dict[str, str]:
    if headers is None:
        headers = {}
    if not isinstance(headers, Mapping) or not all(isinstance(key, str) for key in headers):
        raise TaskFailure("http task headers must be a mapping by name", "http", retryable=False)
    # The key is the run's promise of at-most-once side effects; a task may not override it.
    merged = {k: _as_text(v) for k, v in headers.items() if k.lower() != "idempotency-key"}
    merged["Idempotency-Key"] = idempotency_key
    return merged


def _expected_statuses(value: Any) -> frozenset[int] | None:
    if value is None:
        return None
    statuses = value if isinstance(value, list) else [value]
    if all(isinstance(status, int) and not isinstance(status, bool) for status in statuses):
        return frozenset(statuses)
    raise TaskFailure("http task expect_status must be a list of ints", "http", retryable=False)


async def _read_response(
    response: httpx.Response, expected: frozenset[int] | None
) -> dict[str, Any]:
    status = response.status_code
    if not (200 <= status < 300 if expected is None else status in expected):
        snippet = await _read_body(response, _ERROR_SNIPPET_BYTES, truncate=True)
        retryable = status in _RETRYABLE_HTTP_STATUSES or status >= 500
        message = f"unexpected status {status}: {_decode(snippet, response)}"
        raise TaskFailure(message.strip(), "http", retryable)
    # Read at call time, so the cap can be lowered (tests do).
    body = await _read_body(response, MAX_RESPONSE_BYTES, truncate=False)
    content_type = response.headers.get("content-type")
    output: dict[str, Any] = {"status": status, "headers": {}}
    if content_type is not None:
        output["headers"]["content-type"] = content_type
    parsed = _json_body(body, content_type)
    if parsed is _NOT_JSON:
        output["text"] = _decode(body, response)
    else:
        output["json"] = parsed
    return output


async def _read_body(response: httpx.Response, limit_bytes: int, *, truncate: bool) -> bytes:
    """At most ``limit_bytes`` of the (decompressed) body: cut there, or refuse a longer one."""
    too_large = TaskFailure(
        f"response body is larger than the {limit_bytes} byte limit", "http", False
    )
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > limit_bytes:
        raise too_large
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        chunks.append(chunk)
        if received > limit_bytes:
            if not truncate:
                raise too_large
            break
    return b"".join(chunks)[:limit_bytes]


def _decode(body: bytes, response: httpx.Response) -> str:
    try:
        return body.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _json_body(body: bytes, content_type: str | None) -> Any:
    """The parsed body when it is declared and parses as JSON, else ``_NOT_JSON``: a body that
    claims JSON but is not reaches the task as text rather than failing it."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        return _NOT_JSON
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return _NOT_JSON
