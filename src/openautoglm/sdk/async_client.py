"""The asyncio/trio client, :class:`AsyncGLMClient`: :class:`GLMClient`'s methods as coroutines.

It shares request bodies, parsing and retry decisions with the sync client (``_protocol``,
``retry``); only sending and waiting differ. Streaming is two steps, so that refusals (and their
retries) happen in the ``await`` and iteration only reads text::

    stream = await client.generate("hi", stream=True)
    async with stream:
        async for delta in stream:
            ...
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, overload

import anyio
import httpx

from openautoglm.sdk._protocol import (
    MODELS_REQUEST,
    ApiRequest,
    build_chat_request,
    build_generate_request,
    decode_json_body,
    failure_from_response,
    parse_chat_result,
    parse_generation,
    parse_model_ids,
    request_id_of,
)
from openautoglm.sdk.config import ClientConfig, resolve_config
from openautoglm.sdk.errors import error_from_transport
from openautoglm.sdk.retry import Retrier, RetryPolicy
from openautoglm.sdk.streaming import AsyncGenerationStream
from openautoglm.sdk.types import ChatMessages, ChatResult, Generation
from openautoglm.sdk.workflows import (
    build_start_run_request,
    cancel_run_request,
    check_wait,
    get_run_request,
    next_poll_s,
    parse_run,
)


class AsyncGLMClient:
    """Asynchronous client of the Open-AutoGLM API, with the arguments of :class:`GLMClient`.

    Every method is a coroutine. With ``stream=True``, ``generate`` and ``chat`` return an
    :class:`AsyncGenerationStream` once the answer has started (see the module doc). Share one
    client per event loop; ``await close()`` it, or use it in an ``async with`` block.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        region: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        http_client: httpx.AsyncClient | None = None,
        *,
        regions_file: str | os.PathLike[str] | None = None,
        retry_policy: RetryPolicy | None = None,
        _sleep: Callable[[float], Awaitable[None]] | None = None,
        _rng: Callable[[], float] | None = None,
        _now: Callable[[], float] | None = None,
    ) -> None:
        self._config: ClientConfig = resolve_config(
            api_key=api_key,
            base_url=base_url,
            region=region,
            regions_file=regions_file,
            timeout_s=timeout_s,
            max_retries=max_retries,
            environ=os.environ,
        )
        self._retrier = Retrier(
            max_retries,
            retry_policy or RetryPolicy(),
            rng=_rng or random.Random().random,
            now=_now or time.time,
        )
        self._sleep = _sleep or anyio.sleep
        # wait_run measures on a clock that never jumps (or on the fake clock a test injects).
        self._monotonic = _now or time.monotonic
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()

    @property
    def base_url(self) -> str:
        """The server root this client talks to, without ``/v1``."""
        return self._config.base_url

    @overload
    async def generate(
        self,
        prompt: str,
        context_id: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        *,
        model: str | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        user: str | None = None,
        priority: int | None = None,
        deadline_ms: int | None = None,
        stream: Literal[False] = False,
    ) -> Generation: ...

    @overload
    async def generate(
        self,
        prompt: str,
        context_id: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        *,
        model: str | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        user: str | None = None,
        priority: int | None = None,
        deadline_ms: int | None = None,
        stream: Literal[True],
    ) -> AsyncGenerationStream: ...

    @overload
    async def generate(
        self,
        prompt: str,
        context_id: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        *,
        model: str | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        user: str | None = None,
        priority: int | None = None,
        deadline_ms: int | None = None,
        stream: bool,
    ) -> Generation | AsyncGenerationStream: ...

    async def generate(
        self,
        prompt: str,
        context_id: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        *,
        model: str | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        user: str | None = None,
        priority: int | None = None,
        deadline_ms: int | None = None,
        stream: bool = False,
    ) -> Generation | AsyncGenerationStream:
        """Generate text for ``prompt`` (``POST /v1/generate``).

        ``context_id`` continues a stored conversation; ``priority`` is 0 (highest) to 9;
        ``deadline_ms`` is the latency budget. Parameters left ``None`` take the server's
        defaults. With ``stream=True`` returns an :class:`AsyncGenerationStream`.
        """
        request = build_generate_request(
            prompt,
            stream=stream,
            context_id=context_id,
            temperature=temperature,
            max_tokens=max_tokens,
            model=model,
            top_p=top_p,
            stop=stop,
            seed=seed,
            user=user,
            priority=priority,
            deadline_ms=deadline_ms,
        )
        if stream:
            return AsyncGenerationStream(await self._send(request), "generate")
        return parse_generation(*await self._fetch_json(request))

    @overload
    async def chat(
        self,
        messages: ChatMessages,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        *,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        context_id: str | None = None,
        user: str | None = None,
        priority: int | None = None,
        deadline_ms: int | None = None,
        stream: Literal[False] = False,
        **extra: Any,
    ) -> ChatResult: ...

    @overload
    async def chat(
        self,
        messages: ChatMessages,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        *,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        context_id: str | None = None,
        user: str | None = None,
        priority: int | None = None,
        deadline_ms: int | None = None,
        stream: Literal[True],
        **extra: Any,
    ) -> AsyncGenerationStream: ...

    @overload
    async def chat(
        self,
        messages: ChatMessages,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        *,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        context_id: str | None = None,
        user: str | None = None,
        priority: int | None = None,
        deadline_ms: int | None = None,
        stream: bool,
        **extra: Any,
    ) -> ChatResult | AsyncGenerationStream: ...

    async def chat(
        self,
        messages: ChatMessages,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        *,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        context_id: str | None = None,
        user: str | None = None,
        priority: int | None = None,
        deadline_ms: int | None = None,
        stream: bool = False,
        **extra: Any,
    ) -> ChatResult | AsyncGenerationStream:
        """Chat completion in OpenAI format (``POST /v1/chat/completions``).

        ``messages`` are OpenAI message dicts, or one string taken as a user message. ``extra``
        fields (``tools``, ``response_format``, ...) go into the body as given. With
        ``stream=True`` returns an :class:`AsyncGenerationStream`; ``usage`` is filled at the end.
        """
        request = build_chat_request(
            messages,
            stream=stream,
            extra=extra,
            model=model,
            temperature=temperature,
            max_tokens=max_tokens,
            top_p=top_p,
            stop=stop,
            seed=seed,
            context_id=context_id,
            user=user,
            priority=priority,
            deadline_ms=deadline_ms,
        )
        if stream:
            return AsyncGenerationStream(await self._send(request), "chat")
        return parse_chat_result(*await self._fetch_json(request))

    async def models(self) -> list[str]:
        """The ids of the models this key may use (``GET /v1/models``)."""
        return parse_model_ids(*await self._fetch_json(MODELS_REQUEST))

    async def start_run(
        self,
        workflow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        deadline_s: float | None = None,
        dedupe_key: str | None = None,
    ) -> dict[str, Any]:
        """Start a run of ``workflow`` (``POST /v1/workflows/{name}/runs``); the new run.

        ``priority`` is 0 (highest) to 9; ``deadline_s`` asks the run to finish within that many
        seconds; with ``dedupe_key`` at most one run starts per key (a repeat gets that run).
        """
        request = build_start_run_request(
            workflow, inputs, priority=priority, deadline_s=deadline_s, dedupe_key=dedupe_key
        )
        return parse_run(*await self._fetch_json(request))

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """A run with its tasks: states, attempts, outputs, errors (``GET /v1/runs/{id}``)."""
        return parse_run(*await self._fetch_json(get_run_request(run_id)))

    async def wait_run(
        self, run_id: str, timeout_s: float = 600, poll_s: float = 0.5
    ) -> dict[str, Any]:
        """Poll the run every ``poll_s`` until it succeeded, failed or was cancelled; that run.

        Raises :class:`APITimeoutError` when it is still going after ``timeout_s``.
        """
        check_wait(timeout_s, poll_s)
        deadline = self._monotonic() + timeout_s
        while True:
            run = await self.get_run(run_id)
            left_s = deadline - self._monotonic()
            delay_s = next_poll_s(run, left_s=left_s, poll_s=poll_s, timeout_s=timeout_s)
            if delay_s is None:
                return run
            await self._sleep(delay_s)

    async def cancel_run(self, run_id: str) -> dict[str, Any]:
        """Cancel an unfinished run (``POST /v1/runs/{id}/cancel``); the run, now cancelled.

        A run that already finished is refused with :class:`ConflictError`.
        """
        return parse_run(*await self._fetch_json(cancel_run_request(run_id)))

    async def close(self) -> None:
        """Release pooled connections (unless the ``http_client`` was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncGLMClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _fetch_json(self, request: ApiRequest) -> tuple[Mapping[str, Any], str | None]:
        response = await self._send(request)
        request_id = request_id_of(response)
        return decode_json_body(response.content, request_id), request_id

    async def _send(self, request: ApiRequest) -> httpx.Response:
        """Send with retries; return a 2xx response (open, for streams) or raise a GLMError."""
        http_request = self._http.build_request(
            request.method,
            self._config.url(request.path),
            json=request.body,
            headers=self._config.headers(is_stream=request.is_stream),
            timeout=self._config.timeout_s,
        )
        attempt = 0
        while True:
            try:
                response = await self._http.send(http_request, stream=request.is_stream)
            except httpx.TransportError as exc:
                delay_s = self._retrier.delay_after_error(attempt, exc)
                if delay_s is None:
                    raise error_from_transport(exc) from exc
            else:
                if response.is_success:
                    return response
                try:
                    await response.aread()
                except httpx.TransportError as exc:
                    raise error_from_transport(exc, request_id_of(response)) from exc
                finally:
                    await response.aclose()
                error, delay_s = failure_from_response(
                    response,
                    attempt=attempt,
                    retrier=self._retrier,
                    has_api_key=self._config.api_key is not None,
                )
                if delay_s is None:
                    raise error
            await self._sleep(delay_s)
            attempt += 1
