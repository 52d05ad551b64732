"""Turning a finished request's trace into its audit event.

Every request that reached authentication is audited, refused ones included; the event is
queued (never written on the request path) and carries the call chain, the policy decisions,
and the prompt and answer as the tenant's content mode allows.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import cast

from openautoglm.audit.log import AuditLog
from openautoglm.audit.model import AuditRecord, ContentMode, content_for
from openautoglm.gateway.trace import CallTrace
from openautoglm.policy.masking import mask_pii

logger = logging.getLogger(__name__)


def audit_record(trace: CallTrace, status: int, request_id: str) -> AuditRecord:
    """The audit record of a finished request."""
    principal = trace.principal
    mode = cast(ContentMode, trace.content_mode)
    usage = trace.usage
    return AuditRecord(
        request_id=request_id,
        occurred_at=datetime.now(UTC),
        kind="admin" if trace.action is not None else "request",
        endpoint=trace.endpoint,
        status=status,
        tenant_id=principal.tenant_id if principal is not None else None,
        key_id=principal.key_id if principal is not None else None,
        role=principal.role.value if principal is not None else None,
        action=trace.action,
        model=trace.model,
        version=trace.version,
        instance=trace.instance,
        error_code=trace.error_code,
        client_ip=trace.client_ip,
        stages=trace.stages,  # the trace is done with; the chain rounds to 6 decimals
        usage=(
            {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
            if usage is not None
            else None
        ),
        decisions=[decision.as_dict() for decision in trace.decisions],
        prompt=_content(mode, trace.prompt),
        answer=_content(mode, trace.answer),
        detail=_detail(trace),
    )


def _detail(trace: CallTrace) -> dict[str, object] | None:
    if trace.policy_version is None and trace.finish_reason is None:
        return trace.detail
    detail: dict[str, object] = dict(trace.detail or {})
    if trace.policy_version is not None:
        detail["policy"] = trace.policy_version
    if trace.finish_reason is not None:
        detail["finish_reason"] = trace.finish_reason
    return detail


def _content(mode: ContentMode, text: str | None) -> str | None:
    if text is None or mode == "none":
        return None
    return content_for(mode, text, mask_pii(text) if mode == "masked" else None)


def record_trace(audit: AuditLog | None, trace: CallTrace, status: int, request_id: str) -> None:
    """Queue the audit event of a request that reached authentication."""
    if audit is None or not trace.authenticated:
        return
    try:
        audit.record(audit_record(trace, status, request_id))
    except Exception:
        logger.exception("could not queue the audit event of request %s", request_id)
