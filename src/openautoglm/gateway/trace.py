"""The call chain of one request, filled in along the path and turned into its audit event.

The HTTP layer creates a :class:`CallTrace` per request; the gateway records who called, what
served the call, how long each stage took, what the policies decided and what was said. When
the response has been sent the HTTP layer adds the status and hands the trace to the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from openautoglm.core.types import GenerationRequest, Usage
from openautoglm.policy.engine import Decision
from openautoglm.tenancy.model import Principal


@dataclass(slots=True)
class CallTrace:
    """What one request did. Stage durations are in milliseconds, in the order they ran."""

    endpoint: str
    client_ip: str | None = None
    started: float = field(default_factory=time.perf_counter)
    authenticated: bool = False
    principal: Principal | None = None
    model: str | None = None
    instance: str | None = None
    version: str | None = None
    policy_version: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    usage: Usage | None = None
    prompt: str | None = None
    answer: str | None = None
    content_mode: str = "none"
    error_code: str | None = None
    finish_reason: str | None = None
    action: str | None = None
    detail: dict[str, Any] | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` body as stage ``name`` (added to an earlier stage of that name)."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.add_stage(name, begun)

    def add_stage(self, name: str, begun: float) -> None:
        elapsed = (time.perf_counter() - begun) * 1000.0
        self.stages[name] = self.stages.get(name, 0.0) + elapsed

    def admin_action(self, action: str, **detail: Any) -> None:
        """Mark this request as the admin action ``action`` (``key.created``…)."""
        self.action = action
        self.detail = {name: value for name, value in detail.items() if value is not None}

    def note_request(self, request: GenerationRequest) -> None:
        """Keep the prompt as the caller sent it (the audit log decides what it stores)."""
        self.model = request.model
        if self.content_mode == "none":
            return
        if request.kind == "chat":
            self.prompt = "\n".join(f"{m.role}: {m.text}" for m in request.messages)
        else:
            self.prompt = request.prompt


def untraced() -> CallTrace:
    """A trace nobody records (calls made outside HTTP, such as summaries)."""
    return CallTrace(endpoint="internal")
