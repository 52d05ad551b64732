"""The gateway: every inference request, whatever its entry point, passes through here.

Stages, in order: authenticate (done by the caller with :meth:`Gateway.authenticate`), authorise
the model, check the model can take the request, pick an instance, run the backend, record
metrics. A request refused at any stage raises an ``OpenAutoGLMError``; nothing here knows HTTP.

Invariant for streams: :meth:`Gateway.open_stream` returns only after the backend produced its
first chunk, so a failure before the first byte is still an ordinary error response; closing the
returned stream closes the backend's generator (a disconnected client frees its generation).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from openautoglm.backends.base import collect
from openautoglm.core.errors import (
    InvalidRequestError,
    OpenAutoGLMError,
    PermissionDeniedError,
)
from openautoglm.core.types import Chunk, Completion, Embeddings, GenerationRequest, Usage
from openautoglm.observability.metrics import GatewayMetrics
from openautoglm.routing.catalog import Instance, ModelCatalog, ServedModel, model_not_found
from openautoglm.tenancy.auth import Authenticator
from openautoglm.tenancy.model import Principal


@dataclass(slots=True)
class OpenStream:
    """A stream that has produced its first chunk; iterate it for the rest, always close it."""

    instance: Instance
    first: Chunk
    rest: AsyncIterator[Chunk]


class Gateway:
    """Runs requests through the stages of the request path."""

    def __init__(
        self, catalog: ModelCatalog, authenticator: Authenticator, metrics: GatewayMetrics
    ) -> None:
        self.catalog = catalog
        self._authenticator = authenticator
        self._metrics = metrics

    async def authenticate(self, secret: str | None) -> Principal:
        return await self._authenticator.authenticate(secret)

    def visible_models(self, principal: Principal) -> list[ServedModel]:
        """The models this caller may use, in configuration order."""
        return [model for model in self.catalog if principal.may_use_model(model.name)]

    def route(self, principal: Principal, request: GenerationRequest) -> Instance:
        """Authorise and validate ``request`` against its model, then pick an instance."""
        if not principal.role.may_infer:
            raise PermissionDeniedError(
                f"role '{principal.role.value}' may not call models", code="role_forbidden"
            )
        model = self._authorised_model(principal, request.model)
        capabilities = model.capabilities
        if request.kind == "chat" and not capabilities.chat:
            raise InvalidRequestError(
                f"model '{model.name}' does not support chat completions; use /v1/completions",
                code="unsupported_endpoint",
            )
        if request.kind == "completion" and not capabilities.completion:
            raise InvalidRequestError(
                f"model '{model.name}' does not support text completions",
                code="unsupported_endpoint",
            )
        if request.has_images and not capabilities.vision:
            raise InvalidRequestError(
                f"model '{model.name}' does not accept image input",
                code="image_input_not_supported",
                param="messages",
            )
        return model.pick()

    async def complete(
        self, principal: Principal, request: GenerationRequest
    ) -> tuple[Instance, Completion]:
        """Run a request to the end and return the whole answer."""
        instance = self.route(principal, request)
        started = time.perf_counter()
        instance.in_flight += 1
        try:
            completion = await collect(instance.backend.generate(request))
        except OpenAutoGLMError as exc:
            self._metrics.observe(instance, exc.code, time.perf_counter() - started, None)
            raise
        except asyncio.CancelledError:
            self._metrics.observe(instance, "cancelled", time.perf_counter() - started, None)
            raise
        finally:
            instance.in_flight -= 1
        self._metrics.observe(instance, "ok", time.perf_counter() - started, completion.usage)
        return instance, completion

    async def open_stream(self, principal: Principal, request: GenerationRequest) -> OpenStream:
        """Start a streamed request and wait for its first chunk."""
        instance = self.route(principal, request)
        stream = self._observed(instance, instance.backend.generate(request))
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = Chunk(finish_reason="stop", usage=Usage())
        except BaseException:
            await stream.aclose()
            raise
        return OpenStream(instance=instance, first=first, rest=stream)

    async def embed(
        self, principal: Principal, model_name: str, inputs: Sequence[str]
    ) -> tuple[Instance, Embeddings]:
        model = self._authorised_model(principal, model_name)
        if not model.capabilities.embeddings:
            raise InvalidRequestError(
                f"model '{model.name}' does not support embeddings",
                code="embeddings_not_supported",
                param="model",
            )
        instance = model.pick()
        started = time.perf_counter()
        embeddings = await instance.backend.embed(inputs)
        self._metrics.observe(instance, "ok", time.perf_counter() - started, embeddings.usage)
        return instance, embeddings

    def _authorised_model(self, principal: Principal, name: str | None) -> ServedModel:
        model = self.catalog.get(name)
        if not principal.may_use_model(model.name):
            # Same answer as an unknown model: a key must not learn what it cannot use.
            raise model_not_found(model.name)
        return model

    async def _observed(
        self, instance: Instance, chunks: AsyncIterator[Chunk]
    ) -> AsyncIterator[Chunk]:
        started = time.perf_counter()
        outcome, usage = "cancelled", None
        instance.in_flight += 1
        try:
            async for chunk in chunks:
                if chunk.usage is not None:
                    usage = chunk.usage
                yield chunk
            outcome = "ok"
        except OpenAutoGLMError as exc:
            outcome = exc.code
            raise
        finally:
            instance.in_flight -= 1
            await chunks.aclose()  # type: ignore[attr-defined]
            self._metrics.observe(instance, outcome, time.perf_counter() - started, usage)
