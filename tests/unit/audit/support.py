"""Records for audit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from openautoglm.audit.model import AuditRecord

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_record(n: int = 0, **changes: Any) -> AuditRecord:
    """The ``n``-th request record: one second after the previous one, tenant ``ten_a``."""
    fields: dict[str, Any] = {
        "request_id": f"req_{n:06d}",
        "occurred_at": T0 + timedelta(seconds=n),
        "kind": "request",
        "endpoint": "POST /v1/chat/completions",
        "status": 200,
        "tenant_id": "ten_a",
        "key_id": "key_a",
        "role": "developer",
        "model": "echo",
        "instance": "echo/default",
        "client_ip": "10.0.0.1",
        "stages": {"auth": 0.1, "limits": 0.05, "policy": 0.3, "backend": 12.5},
        "usage": {"prompt_tokens": 5, "completion_tokens": 7},
        "decisions": (),
        "prompt": f"question {n}",
        "answer": f"answer {n}",
    }
    fields.update(changes)
    return AuditRecord(**fields)
