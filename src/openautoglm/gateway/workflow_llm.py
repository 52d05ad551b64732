"""The ``llm`` task of a workflow through the normal request path.

Each call runs as the workflows' principal (an operator of the configured tenant): that tenant's
policies apply to the prompt and the answer, the call goes through routing, scheduling and
failover like any other, and it is audited (endpoint ``workflow``, the task's idempotency key in
the event's detail).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from openautoglm.audit.log import AuditLog
from openautoglm.core.errors import OpenAutoGLMError
from openautoglm.core.ids import RequestIds
from openautoglm.core.types import GenerationRequest, Message, Role, SamplingParams
from openautoglm.gateway.audit_trail import record_trace
from openautoglm.gateway.pipeline import Gateway
from openautoglm.gateway.trace import CallTrace
from openautoglm.tenancy.model import Principal

_IDS = RequestIds()


class GatewayLlm:
    """An ``LlmCaller`` for workflow tasks."""

    def __init__(self, gateway: Gateway, principal: Principal, audit: AuditLog | None) -> None:
        self._gateway = gateway
        self._principal = principal
        self._audit = audit

    async def __call__(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None,
        temperature: float | None,
        idempotency_key: str,
    ) -> Mapping[str, Any]:
        request_id = _IDS.next()
        request = GenerationRequest(
            request_id=request_id,
            model=model,
            kind="chat",
            messages=tuple(
                Message(role=cast(Role, message["role"]), content=message["content"])
                for message in messages
            ),
            params=SamplingParams(temperature=temperature, max_tokens=max_tokens),
            tenant_id=self._principal.tenant_id,
        )
        trace = CallTrace(endpoint="workflow", authenticated=True, principal=self._principal)
        trace.admin_action("workflow.llm", idempotency_key=idempotency_key)
        trace.action = None  # an inference call, not an admin action: keep only the detail
        trace.note_request(request)
        status = 200
        try:
            answer = await self._gateway.complete(self._principal, request, trace)
        except OpenAutoGLMError as exc:
            status, trace.error_code = exc.status, exc.code
            raise
        finally:
            record_trace(self._audit, trace, status, request_id)
        usage = answer.completion.usage
        return {
            "text": answer.completion.text,
            "finish_reason": answer.completion.finish_reason,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            },
            "model": answer.instance.model,
            "version": answer.instance.version,
        }
