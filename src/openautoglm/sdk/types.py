"""Result values the SDK returns: :class:`Generation`, :class:`ChatResult` and their :class:`Usage`.

All are frozen; ``request_id`` is the server's ``X-Request-Id`` for the call that produced them, the
handle to quote when asking operators about a request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ChatMessage = Mapping[str, Any]
"""One chat message in OpenAI form, e.g. ``{"role": "user", "content": "hi"}``."""

ChatMessages = str | Sequence[ChatMessage]
"""Messages for :meth:`GLMClient.chat`; a bare string is one user message."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call; zeros where the server did not report them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Generation:
    """The answer of ``POST /v1/generate``."""

    text: str
    usage: Usage
    id: str
    model: str
    finish_reason: str | None
    context_id: str | None = None
    instance: str | None = None
    version: str | None = None
    created: int | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    """The answer of ``POST /v1/chat/completions``; ``raw`` is the full OpenAI-format body."""

    text: str
    usage: Usage
    id: str
    model: str
    finish_reason: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)
    request_id: str | None = None
