"""Evaluation items through the normal request path: the validation pipeline's asker and judge.

Each item is one call of the caller's key to ``model`` pinned to the version under test (as the
``X-AutoGLM-Version`` header pins it), so the tenant's policies, limits and audit apply exactly
as for live traffic. A policy decision on the call (a refusal, a masked prompt, a blocked
answer) counts as a policy hit.
"""

from __future__ import annotations

import time
from typing import cast

from openautoglm.core.errors import OpenAutoGLMError
from openautoglm.core.ids import RequestIds
from openautoglm.core.types import GenerationRequest, Message, Role, SamplingParams
from openautoglm.gateway.pipeline import Gateway
from openautoglm.gateway.trace import CallTrace
from openautoglm.registry.evaluation import EvalItem, Score
from openautoglm.registry.judging import judge_messages, parse_verdict
from openautoglm.registry.validation import Reply
from openautoglm.tenancy.model import Principal

_IDS = RequestIds()


def _request(
    model: str, version: str | None, messages: list[dict[str, str]], item: EvalItem | None
) -> GenerationRequest:
    return GenerationRequest(
        request_id=_IDS.next(),
        model=model,
        kind="chat",
        messages=tuple(
            Message(role=cast(Role, message["role"]), content=message["content"])
            for message in messages
        ),
        params=SamplingParams(
            temperature=item.temperature if item is not None else 0.0,
            max_tokens=item.max_tokens if item is not None else 16,
        ),
        version=version,
    )


class GatewayAsker:
    """Asks one version of a model an evaluation item, as ``principal``."""

    def __init__(self, gateway: Gateway, principal: Principal, model: str, version: str) -> None:
        self._gateway = gateway
        self._principal = principal
        self._model = model
        self._version = version

    async def __call__(self, item: EvalItem) -> Reply:
        trace = CallTrace(endpoint="validation")
        request = _request(self._model, self._version, item.chat_messages(), item)
        started = time.perf_counter()
        try:
            answer = await self._gateway.complete(self._principal, request, trace)
        except OpenAutoGLMError as exc:
            return Reply(
                text="",
                latency_s=time.perf_counter() - started,
                ttft_s=None,
                completion_tokens=0,
                policy_hit=bool(trace.decisions),
                error_code=exc.code,
            )
        first_ms = trace.stages.get("first_token")
        return Reply(
            text=answer.completion.text,
            latency_s=time.perf_counter() - started,
            ttft_s=first_ms / 1000.0 if first_ms is not None else None,
            completion_tokens=answer.completion.usage.completion_tokens,
            policy_hit=bool(trace.decisions),
        )


class GatewayJudge:
    """Grades an answer with a judge model (its serving version), as ``principal``."""

    def __init__(self, gateway: Gateway, principal: Principal, model: str) -> None:
        self._gateway = gateway
        self._principal = principal
        self._model = model

    async def __call__(self, item: EvalItem, answer: str) -> Score:
        request = _request(self._model, None, judge_messages(item, answer), None)
        reply = await self._gateway.complete(self._principal, request, CallTrace("judge"))
        return parse_verdict(reply.completion.text)
