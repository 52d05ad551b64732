"""Audit values: what the request path hands over (``AuditRecord``) and what the log holds.

Invariant: an ``AuditRecord``'s ``occurred_at`` is timezone-aware UTC, and its content fields
(``prompt``, ``answer``) are already reduced to what the tenant's content mode allows — the log
stores what it is given and never sees the raw text of a tenant that asked for less.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

Kind = Literal["request", "admin"]
ContentMode = Literal["none", "hash", "masked", "full"]
KINDS: tuple[str, ...] = get_args(Kind)
CONTENT_MODES: tuple[str, ...] = get_args(ContentMode)
GENESIS_HASH = "0" * 64
"""``prev_hash`` of event 1: the chain starts from 32 zero bytes."""


def content_for(mode: ContentMode, text: str | None, masked_text: str | None = None) -> str | None:
    """What the log may keep of ``text`` under ``mode``.

    ``none``: nothing; ``hash``: ``sha256:<hex>`` of its UTF-8 bytes (proves what was said without
    keeping it); ``masked``: ``masked_text`` (the caller's redaction); ``full``: the text itself.
    """
    if mode == "none" or text is None:
        return None
    if mode == "hash":
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    if mode == "masked":
        return masked_text
    if mode == "full":
        return text
    raise ValueError(f"unknown content mode {mode!r}; expected one of {', '.join(CONTENT_MODES)}")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited request or admin action, as the request path reports it.

    ``stages`` maps pipeline stage to its duration in ms in call order; ``decisions`` are the
    policy decisions taken, each at least ``{"rule", "action", "stage"}``.
    """

    request_id: str
    occurred_at: datetime
    kind: Kind
    endpoint: str
    status: int
    tenant_id: str | None = None
    key_id: str | None = None
    role: str | None = None
    action: str | None = None
    model: str | None = None
    version: str | None = None
    instance: str | None = None
    error_code: str | None = None
    client_ip: str | None = None
    stages: Mapping[str, float] = field(default_factory=dict)
    usage: Mapping[str, int] | None = None
    decisions: Sequence[Mapping[str, str]] = ()
    prompt: str | None = None
    answer: str | None = None
    detail: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.occurred_at.tzinfo is None:
            raise ValueError("AuditRecord.occurred_at must be timezone-aware")
        if self.occurred_at.utcoffset():
            object.__setattr__(self, "occurred_at", self.occurred_at.astimezone(UTC))
        if self.kind not in KINDS:
            raise ValueError(f"AuditRecord.kind must be one of {', '.join(KINDS)}")
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise ValueError("AuditRecord.status must be an int (the HTTP status)")

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """The distinct policy rules that decided something, in first-seen order."""
        return rule_ids_of(self.decisions)


def rule_ids_of(decisions: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The distinct non-empty ``rule`` values of ``decisions``, in first-seen order."""
    return tuple(dict.fromkeys(str(d["rule"]) for d in decisions if d.get("rule")))


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """A record once chained: ``seq`` is global and gapless from 1, and
    ``hash = sha256(prev_hash bytes + canonical JSON)`` (see ``audit.chain``)."""

    seq: int
    record: AuditRecord
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest event's position: the point the next append links to."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of checking the log.

    ``first_broken_seq`` is the first seq whose stored event (or its absence) fails a check;
    ``reason`` says which check, naming seqs and column names only, never content.
    """

    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str | None = None
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
