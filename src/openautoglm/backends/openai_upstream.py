"""The ``openai`` backend: any OpenAI-compatible upstream (vLLM, SGLang, TGI, Ollama, llama.cpp
server, Zhipu, OpenAI).

Connections are pooled (one aiohttp session per instance, at most ``max_concurrency`` open);
``timeout_s`` bounds each wait for the upstream's next bytes, so long streams are not cut.
Streams are passed through chunk by chunk, never buffered; closing the stream closes the upstream
connection, so the upstream stops generating. Upstream failures become our errors: 4xx validation
→ 400, 429 → 429 (``Retry-After`` kept), auth/other 4xx and 5xx → 502, 503 → 503, unreachable →
503, timeout → 504, an answer broken off mid-way → 502.

With ``forward_priority`` a request's ``priority`` (0 highest … 9) is sent as the body field
``priority``: vLLM's priority scheduling serves lower values first. It is off by default because
other upstreams (OpenAI among them) refuse fields they do not know.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson

from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    OpenAutoGLMError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from openautoglm.core.types import (
    Capabilities,
    Chunk,
    Embeddings,
    GenerationRequest,
    Message,
    Usage,
)

_JSON = {"Content-Type": "application/json"}


class OpenAIUpstreamBackend:
    """Forwards requests to an OpenAI-compatible HTTP server."""

    def __init__(
        self, config: InstanceConfig, model_name: str, *, forward_priority: bool = False
    ) -> None:
        assert config.base_url, "validated by ModelConfig"
        self._config = config
        self._forward_priority = forward_priority
        self._base_url = config.base_url.rstrip("/")
        self._upstream_model = config.upstream_model or model_name
        self._session: aiohttp.ClientSession | None = None
        self._capabilities = Capabilities(
            embeddings=True, vision=bool(config.vision), context_length=config.context_length
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        headers = {"Accept": "application/json"}
        if self._config.api_key:
            headers["Authorization"] = f"Bearer {self._config.api_key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(
                limit=self._config.max_concurrency, keepalive_timeout=60
            ),
            # timeout_s bounds each wait for upstream bytes, not the whole answer: a long
            # stream that keeps sending must not be cut off.
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._config.connect_timeout_s,
                sock_read=self._config.timeout_s,
            ),
            json_serialize=lambda value: orjson.dumps(value).decode(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> bool:
        try:
            async with self._client.get(
                f"{self._base_url}/models", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                # 401/403: our credentials are wrong, so nothing we send would be served.
                return response.status < 500 and response.status not in (401, 403)
        except (TimeoutError, aiohttp.ClientError):
            return False

    def metrics(self) -> dict[str, float]:
        return {}

    @property
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ServiceUnavailableError("backend not started", code="backend_not_started")
        return self._session

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        path = "/chat/completions" if request.kind == "chat" else "/completions"
        body = self._request_body(request)
        with self._upstream_errors():
            async with self._client.post(
                self._base_url + path, data=orjson.dumps(body), headers=_JSON
            ) as response:
                if response.status >= 400:
                    raise await _upstream_error(response)
                if request.stream:
                    async for chunk in _read_stream(response, request.kind):
                        yield chunk
                else:
                    yield _parse_completion(await response.read(), request.kind)

    async def embed(self, inputs: Sequence[str]) -> Embeddings:
        body = {"model": self._upstream_model, "input": list(inputs)}
        with self._upstream_errors():
            async with self._client.post(
                self._base_url + "/embeddings", data=orjson.dumps(body), headers=_JSON
            ) as response:
                if response.status >= 400:
                    raise await _upstream_error(response)
                payload = _load(await response.read())
        try:
            rows = sorted(payload["data"], key=lambda row: row.get("index", 0))
            vectors = tuple(tuple(float(v) for v in row["embedding"]) for row in rows)
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError("upstream sent a malformed embeddings response") from exc
        return Embeddings(vectors=vectors, usage=_usage(payload.get("usage")) or Usage())

    @contextmanager
    def _upstream_errors(self) -> Iterator[None]:
        """Turn transport failures into our errors (the body's own errors are mapped apart)."""
        try:
            yield
        # aiohttp's read timeouts are connection errors too, so timeouts are caught first.
        except TimeoutError as exc:
            raise DeadlineExceededError(
                f"upstream {self._base_url} sent nothing for {self._config.timeout_s} s",
                code="upstream_timeout",
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise ServiceUnavailableError(
                f"upstream {self._base_url} is unreachable: {exc}", code="upstream_unreachable"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"upstream {self._base_url} broke off its answer: {exc}", code="upstream_error"
            ) from exc

    def _request_body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._upstream_model, "stream": request.stream}
        if request.kind == "chat":
            body["messages"] = [_message_dict(message) for message in request.messages]
        else:
            body["prompt"] = request.prompt
        params = request.params
        # top_k / repetition_penalty / stop_token_ids are vLLM/SGLang extensions: sent only
        # when the caller set them, so plain OpenAI bodies stay plain.
        for name in ("temperature", "top_p", "max_tokens", "seed", "top_k", "repetition_penalty"):
            value = getattr(params, name)
            if value is not None:
                body[name] = value
        if params.stop:
            body["stop"] = list(params.stop)
        if params.stop_token_ids:
            body["stop_token_ids"] = list(params.stop_token_ids)
        if request.user:
            body["user"] = request.user
        if self._forward_priority and request.priority is not None:
            body["priority"] = request.priority
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        return body


def _message_dict(message: Message) -> dict[str, Any]:
    if isinstance(message.content, str):
        content: Any = message.content
    else:
        content = [
            {"type": "text", "text": part.text or ""}
            if part.type == "text"
            else {"type": "image_url", "image_url": _image(part.image_url, part.detail)}
            for part in message.content
        ]
    result: dict[str, Any] = {"role": message.role, "content": content}
    if message.name:
        result["name"] = message.name
    return result


def _image(url: str | None, detail: str | None) -> dict[str, str]:
    image = {"url": url or ""}
    if detail:
        image["detail"] = detail
    return image


def _load(raw: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("upstream sent a response that is not JSON") from exc
    if not isinstance(payload, dict):
        raise UpstreamError("upstream sent a JSON value that is not an object")
    return payload


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
    )


def _choice_text(choice: dict[str, Any], kind: str, streamed: bool) -> str:
    if kind == "completion":
        return str(choice.get("text") or "")
    message = choice.get("delta" if streamed else "message") or {}
    return str(message.get("content") or "")


def _finish(reason: Any) -> Any:
    return (
        reason if reason in ("stop", "length", "content_filter") else ("stop" if reason else None)
    )


def _parse_completion(raw: bytes, kind: str) -> Chunk:
    payload = _load(raw)
    try:
        choice = payload["choices"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise UpstreamError("upstream response has no choices") from exc
    return Chunk(
        text=_choice_text(choice, kind, streamed=False),
        finish_reason=_finish(choice.get("finish_reason")) or "stop",
        usage=_usage(payload.get("usage")) or Usage(),
    )


async def _read_stream(response: aiohttp.ClientResponse, kind: str) -> AsyncIterator[Chunk]:
    finish_reason = None
    usage: Usage | None = None
    async for line in response.content:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        payload = _load(data)
        if "error" in payload:
            raise UpstreamError(f"upstream stream failed: {_error_message(payload)}")
        usage = _usage(payload.get("usage")) or usage
        for choice in payload.get("choices") or ():
            text = _choice_text(choice, kind, streamed=True)
            finish_reason = _finish(choice.get("finish_reason")) or finish_reason
            if text:
                yield Chunk(text=text)
    yield Chunk(finish_reason=finish_reason or "stop", usage=usage or Usage())


def _error_message(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error:
        return str(error)
    return str(payload)[:500]


async def _upstream_error(response: aiohttp.ClientResponse) -> OpenAutoGLMError:
    raw = await response.read()
    try:
        message = _error_message(orjson.loads(raw))
    except orjson.JSONDecodeError:
        message = raw[:500].decode("utf-8", "replace")
    status = response.status
    detail = f"upstream answered {status}: {message}"
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if status in (400, 422):
        return InvalidRequestError(message, code="upstream_rejected_request")
    if status == 413:
        return PayloadTooLargeError(message)
    if status == 429:
        return RateLimitError(detail, code="upstream_rate_limited", retry_after_s=retry_after)
    if status == 503:
        return ServiceUnavailableError(
            detail, code="upstream_unavailable", retry_after_s=retry_after
        )
    if status == 504:
        return DeadlineExceededError(detail, code="upstream_timeout")
    return UpstreamError(detail)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
