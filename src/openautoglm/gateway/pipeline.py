"""The gateway: every inference request, whatever its entry point, passes through here.

Stages, in order: authenticate (the caller, with :meth:`Gateway.authenticate`); input policy
(suspended keys, model lists, caps, sensitive words and PII in the prompt); route (role, model
allow-list, capabilities, regions -> an instance); context (load and window the history,
holding the context for the whole call); limits (reserve the worst-case cost); backend, under
the deadline and through the output policy; then settle the real cost, store the turn, record
metrics. Each stage's duration goes into the request's :class:`CallTrace` (the audit log's
call chain). A refusal at any stage raises an
``OpenAutoGLMError``; nothing here knows HTTP.

Invariants: :meth:`Gateway.open_stream` returns only after the backend produced its first chunk,
so a failure before the first byte is still an ordinary error response. However a call ends —
finished, failed, or abandoned by its client — its rate-limit lease is settled with what it
really cost, and its context is released; only a finished answer is stored in the context.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from openautoglm.backends.text import count_tokens
from openautoglm.contexts.windowing import TokenCounter, make_token_counter
from openautoglm.core.errors import (
    InvalidRequestError,
    OpenAutoGLMError,
    ServiceUnavailableError,
)
from openautoglm.core.types import (
    Chunk,
    Completion,
    Embeddings,
    FinishReason,
    GenerationRequest,
    Usage,
)
from openautoglm.gateway.background import BackgroundWork
from openautoglm.gateway.conversation import Conversations
from openautoglm.gateway.failover import INSTANCE_FAILURES, failure_class, hidden, releasing
from openautoglm.gateway.guarding import OutputFilter, within_deadline
from openautoglm.gateway.limiting import RequestLimits
from openautoglm.gateway.policing import CheckedInput, Deadline, Policing
from openautoglm.gateway.queueing import take_slot
from openautoglm.gateway.routing import (
    authorised_model,
    choose_instance,
    require_inference_role,
)
from openautoglm.gateway.summaries import Summariser
from openautoglm.gateway.trace import CallTrace, untraced
from openautoglm.gateway.versions import VersionRouting
from openautoglm.limits.headers import ratelimit_headers
from openautoglm.observability.metrics import GatewayMetrics
from openautoglm.policy.service import PolicyService
from openautoglm.routing.catalog import Instance, ModelCatalog, ServedModel
from openautoglm.tenancy.auth import Authenticator
from openautoglm.tenancy.model import Principal

_ESTIMATE = make_token_counter(count_tokens)


@dataclass(slots=True)
class OpenStream:
    """A call that has produced its first chunk; iterate ``rest``, and always close it."""

    instance: Instance
    first: Chunk
    rest: AsyncGenerator[Chunk, None]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer with what served it and the rate-limit headers to send."""

    instance: Instance
    completion: Completion
    headers: dict[str, str]


@dataclass(slots=True)
class _CallInfo:
    headers: dict[str, str] = field(default_factory=dict)


class Gateway:
    """Runs requests through the stages of the request path."""

    def __init__(
        self,
        catalog: ModelCatalog,
        authenticator: Authenticator,
        metrics: GatewayMetrics,
        limits: RequestLimits,
        conversations: Conversations,
        summary_model: str | None = None,
        policies: PolicyService | None = None,
        audit_content: bool = True,
        versions: VersionRouting | None = None,
    ) -> None:
        self.catalog = catalog
        self.versions = versions
        self._authenticator = authenticator
        self._metrics = metrics
        self._limits = limits
        self._conversations = conversations
        self._background = BackgroundWork()
        self.policing = Policing(policies, self._background.run, keep_content=audit_content)
        self.summary_model = summary_model
        if summary_model is not None and conversations.summarise is None:
            conversations.summarise = Summariser(catalog, summary_model)

    async def authenticate(self, secret: str | None, trace: CallTrace | None = None) -> Principal:
        if trace is None:
            return await self._authenticator.authenticate(secret)
        trace.authenticated = True
        with trace.stage("auth"):
            principal = await self._authenticator.authenticate(secret)
        trace.principal = principal
        return principal

    def visible_models(self, principal: Principal) -> list[ServedModel]:
        """The models this caller may use, in configuration order."""
        return [model for model in self.catalog if principal.may_use_model(model.name)]

    async def open_stream(
        self, principal: Principal, request: GenerationRequest, trace: CallTrace | None = None
    ) -> OpenStream:
        """Start a call and wait for its first chunk: on another instance when one fails before
        that (within the retry budget), then on the model's fallbacks."""
        trace = trace or untraced()
        checked = self.policing.check_input(principal, request, trace)
        request = checked.request
        chain = self.catalog.get(request.model).resilience
        names = [request.model or self.catalog.get(None).name, *chain.fallbacks]
        original: OpenAutoGLMError | None = None
        for index, name in enumerate(names):
            attempt = request if index == 0 else dataclasses.replace(request, model=name)
            try:
                return await self._open_on_model(principal, attempt, trace, checked)
            except OpenAutoGLMError as exc:
                if index and hidden(exc):
                    continue  # a fallback this key may not use: try the next
                original = original or exc
                if failure_class(exc) not in chain.fallback_on:
                    raise
                if index + 1 < len(names):
                    self._metrics.fallback(names[0], names[index + 1])
        assert original is not None
        raise original  # every fallback failed too: the client hears about the model it asked

    async def _open_on_model(
        self,
        principal: Principal,
        request: GenerationRequest,
        trace: CallTrace,
        checked: CheckedInput,
    ) -> OpenStream:
        model = self.catalog.get(request.model)
        among: list[Instance] | None = None
        if self.versions is not None:
            trace.version, among = self.versions.choose(model, request)
        slot = await take_slot(self.catalog, model, principal, request, trace, checked.deadline)
        try:
            opened = await self._open_on_instances(model, principal, request, trace, checked, among)
        except BaseException:
            if slot is not None:
                slot.release(ok=False)
            raise
        if slot is not None:
            opened.rest = releasing(opened.rest, slot)
        if self.versions is not None:
            self.versions.mirror(model, checked.request)
        return opened

    async def _open_on_instances(
        self,
        model: ServedModel,
        principal: Principal,
        request: GenerationRequest,
        trace: CallTrace,
        checked: CheckedInput,
        among: list[Instance] | None = None,
    ) -> OpenStream:
        model.retry_budget.record_request()
        alternatives = len(model.instances if among is None else among)
        tried: list[Instance] = []
        failed: OpenAutoGLMError | None = None
        while True:
            with trace.stage("route"):
                try:
                    instance = choose_instance(
                        self.catalog, principal, request, checked.regions, tried, among
                    )
                except ServiceUnavailableError:
                    if tried and failed is not None:
                        raise failed from None  # nowhere left to retry: the real failure
                    raise
            trace.instance = instance.name
            info = _CallInfo()
            stream = self._call(principal, request, instance, info, trace, checked.deadline)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                first = Chunk(finish_reason="stop", usage=Usage())
            except BaseException as exc:
                await stream.aclose()
                self.policing.refused(principal, exc)
                if (
                    isinstance(exc, OpenAutoGLMError)
                    and failure_class(exc) in INSTANCE_FAILURES
                    and len(tried) + 1 < model.resilience.max_attempts
                    and alternatives > len(tried) + 1
                    and model.retry_budget.try_retry()
                ):
                    tried.append(instance)
                    failed = exc
                    self._metrics.retried(model.name, failure_class(exc) or "")
                    continue
                raise
            return OpenStream(instance=instance, first=first, rest=stream, headers=info.headers)

    async def complete(
        self, principal: Principal, request: GenerationRequest, trace: CallTrace | None = None
    ) -> Answer:
        """Run a call to the end and return the whole answer."""
        opened = await self.open_stream(principal, request, trace)
        parts: list[str] = []
        finish: FinishReason = "stop"
        usage = Usage()
        chunk = opened.first
        try:
            while True:
                parts.append(chunk.text)
                finish = chunk.finish_reason or finish
                usage = chunk.usage or usage
                chunk = await anext(opened.rest)
        except StopAsyncIteration:
            pass
        finally:
            await opened.rest.aclose()
        completion = Completion(text="".join(parts), finish_reason=finish, usage=usage)
        return Answer(instance=opened.instance, completion=completion, headers=opened.headers)

    async def embed(
        self,
        principal: Principal,
        model_name: str,
        inputs: Sequence[str],
        trace: CallTrace | None = None,
    ) -> tuple[Instance, Embeddings]:
        trace = trace or untraced()
        model = authorised_model(self.catalog, principal, model_name)
        trace.model = model.name
        if not model.capabilities.embeddings:
            raise InvalidRequestError(
                f"model '{model.name}' does not support embeddings",
                code="embeddings_not_supported",
                param="model",
            )
        require_inference_role(principal)
        inputs = self.policing.check_texts(principal, model.name, inputs, trace)
        instance = model.pick()
        trace.instance = instance.name
        started = time.perf_counter()
        lease = await self._limits.reserve(principal, sum(count_tokens(text) for text in inputs))
        usage = Usage()
        try:
            with trace.stage("embed"):
                embeddings = await instance.backend.embed(inputs)
            usage = trace.usage = embeddings.usage
        finally:
            if lease is not None:
                self._background.run(self._limits.settle(lease, usage))
        self._metrics.observe(instance, "ok", time.perf_counter() - started, embeddings.usage)
        return instance, embeddings

    async def close(self) -> None:
        if self.versions is not None:
            await self.versions.close()
        await self._background.drain()
        await self._limits.close()

    async def _call(
        self,
        principal: Principal,
        request: GenerationRequest,
        instance: Instance,
        info: _CallInfo,
        trace: CallTrace,
        deadline: Deadline | None,
    ) -> AsyncGenerator[Chunk, None]:
        started = time.perf_counter()
        outcome, cost, judged = "cancelled", None, False
        error: BaseException | None = None
        blocked = False
        instance.in_flight += 1
        try:
            counter = _counter_of(instance)
            with trace.stage("context"):
                turn = await self._conversations.begin(
                    principal, request, instance.backend.capabilities.context_length, counter
                )
            try:
                call, lease, prompt_tokens = turn.request, None, 0
                if self.policing.counts_prompt(principal, call.model):
                    prompt_tokens = _prompt_tokens(call, counter)
                    self.policing.check_prompt_tokens(principal, call.model, prompt_tokens, trace)
                if principal.key_limits or principal.tenant_limits:
                    with trace.stage("limits"):
                        prompt_tokens = prompt_tokens or _prompt_tokens(call, counter)
                        lease = await self._limits.acquire(principal, call, prompt_tokens)
                    if lease is not None:
                        info.headers = ratelimit_headers(lease.status)
                output = OutputFilter(self.policing.policy_of(principal), call.model, trace)
                parts: list[str] = []
                released: list[str] = []
                usage: Usage | None = None
                finish = None
                begun = time.perf_counter()
                chunks = within_deadline(
                    instance.backend.generate(call),
                    deadline.at if deadline else None,
                    deadline.budget_ms if deadline else None,
                )
                try:
                    async for raw in chunks:
                        if not parts and "first_token" not in trace.stages:
                            trace.add_stage("first_token", begun)
                        if raw.text:
                            parts.append(raw.text)
                        if raw.usage is not None:
                            usage = raw.usage
                        chunk = output.filter(raw)
                        if chunk is None:
                            continue
                        if chunk.text:
                            released.append(chunk.text)
                        if chunk.finish_reason is not None:
                            finish = chunk.finish_reason
                        yield chunk
                        if output.blocked_rule is not None:
                            break
                    if finish is None and output.active:
                        tail = output.tail()
                        if tail is not None:
                            released.append(tail.text)
                            finish = tail.finish_reason
                            yield tail
                finally:
                    await chunks.aclose()
                    trace.add_stage("generate", begun)
                    # A call cut short has no usage from the backend: charge what it produced.
                    cost = usage or Usage(
                        prompt_tokens or _prompt_tokens(call, counter), count_tokens("".join(parts))
                    )
                    trace.usage = cost
                    if lease is not None:
                        self._background.run(self._limits.settle(lease, cost))
                answer = "".join(released)
                trace.finish_reason = finish
                if trace.content_mode != "none":
                    trace.answer = answer
                if output.blocked_rule is not None:
                    blocked = True
                    self.policing.output_blocked(principal, output.blocked_rule)
                if finish is not None:
                    await turn.store(Completion(answer, finish, cost))
            finally:
                await turn.release()
            outcome = "ok"
        except OpenAutoGLMError as exc:
            outcome, error = exc.code, exc
            if failure_class(exc) in INSTANCE_FAILURES:
                self.catalog.get(instance.model).record(instance, ok=False)
                judged = True
            raise
        finally:
            instance.in_flight -= 1
            elapsed = time.perf_counter() - started
            if outcome == "ok":
                self.catalog.get(instance.model).record(instance, ok=True, latency_s=elapsed)
            elif not judged:  # cancelled, or refused before the instance was asked
                instance.breaker.abandon_probe()
            self._metrics.observe(instance, outcome, elapsed, cost)
            if self.versions is not None and outcome != "cancelled":
                first_ms = trace.stages.get("first_token")
                ttft_s = None if first_ms is None else first_ms / 1000.0
                self.versions.record(instance, error, elapsed, ttft_s, blocked)


def _prompt_tokens(request: GenerationRequest, counter: TokenCounter) -> int:
    return counter(request.messages) if request.kind == "chat" else count_tokens(request.prompt)


def _counter_of(instance: Instance) -> TokenCounter:
    count_text = getattr(instance.backend, "count_text_tokens", None)
    return make_token_counter(count_text) if callable(count_text) else _ESTIMATE
