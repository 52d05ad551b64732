"""The input policy stage: suspended keys, rules on the prompt, the deadline, and lockouts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from openautoglm.core.types import GenerationRequest
from openautoglm.gateway.trace import CallTrace
from openautoglm.policy.engine import DEFAULT_CONTENT_MODE, EffectivePolicy, PolicyViolation
from openautoglm.policy.service import PolicyService
from openautoglm.tenancy.model import Principal

Background = Callable[[Coroutine[Any, Any, Any]], None]


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a call must be done (event-loop time) and the budget that set it."""

    at: float
    budget_ms: int


@dataclass(frozen=True, slots=True)
class CheckedInput:
    request: GenerationRequest
    regions: tuple[str, ...] | None
    deadline: Deadline | None


class Policing:
    """Asks the policy service about each call; without one, only the caller's deadline counts."""

    def __init__(
        self, service: PolicyService | None, in_background: Background, keep_content: bool = True
    ) -> None:
        self.service = service
        self._in_background = in_background
        # Without an audit log nobody reads the prompt and answer: do not copy them per call.
        self._keep_content = keep_content

    def policy_of(self, principal: Principal) -> EffectivePolicy | None:
        if self.service is None:
            return None
        policy = self.service.for_tenant(principal.tenant_id)
        return None if policy.is_empty else policy

    def check_input(
        self, principal: Principal, request: GenerationRequest, trace: CallTrace
    ) -> CheckedInput:
        """The request as the rules let it through (masked, capped), or a refusal."""
        service = self.service
        if service is None:
            if self._keep_content:
                trace.content_mode = DEFAULT_CONTENT_MODE
            trace.note_request(request)
            return CheckedInput(request, None, _deadline(request.deadline_ms, None))
        service.refuse_if_suspended(principal.key_id)
        policy = service.for_tenant(principal.tenant_id)
        if self._keep_content:
            trace.content_mode = policy.content_mode
        trace.note_request(request)
        if policy.is_empty:
            return CheckedInput(request, None, _deadline(request.deadline_ms, None))
        trace.policy_version = policy.version_label()
        with trace.stage("policy_input"):
            try:
                verdict = policy.check_input(request, trace.decisions)
            except PolicyViolation as exc:
                self._count_violation(principal, exc.rule_id)
                raise
        return CheckedInput(
            verdict.request, verdict.regions, _deadline(request.deadline_ms, verdict.budget_ms)
        )

    def check_texts(
        self, principal: Principal, model: str, texts: Sequence[str], trace: CallTrace
    ) -> list[str]:
        """Input rules over embedding inputs: the texts as the model may see them."""
        checked = []
        for index, text in enumerate(texts):
            request = GenerationRequest(
                request_id=f"embedding-{index}", model=model, kind="completion", prompt=text
            )
            checked.append(self.check_input(principal, request, trace).request.prompt)
        return checked

    def counts_prompt(self, principal: Principal, model: str) -> bool:
        policy = self.policy_of(principal)
        return policy is not None and policy.has_prompt_token_rules(model)

    def check_prompt_tokens(
        self, principal: Principal, model: str, prompt_tokens: int, trace: CallTrace
    ) -> None:
        policy = self.policy_of(principal)
        if policy is not None:
            policy.check_prompt_tokens(model, prompt_tokens, trace.decisions)

    def refused(self, principal: Principal, exc: BaseException) -> None:
        """A call failed before its first chunk: count it if a rule refused it."""
        if isinstance(exc, PolicyViolation):
            self._count_violation(principal, exc.rule_id)

    def output_blocked(self, principal: Principal, rule_id: str) -> None:
        self._count_violation(principal, rule_id)

    def _count_violation(self, principal: Principal, rule_id: str) -> None:
        if self.service is not None:
            self._in_background(
                self.service.record_violation(principal.tenant_id, principal.key_id, rule_id)
            )


def _deadline(request_ms: int | None, budget_ms: int | None) -> Deadline | None:
    budgets = [ms for ms in (request_ms, budget_ms) if ms is not None]
    if not budgets:
        return None
    budget = min(budgets)
    return Deadline(asyncio.get_running_loop().time() + budget / 1000.0, budget)
