"""Conversation-context value types: a context, its turns, and how turns group into exchanges.

Invariants:

- A context is identified by ``(tenant_id, id)``; the same ``id`` in two tenants names two
  unrelated contexts. ``id`` is 1-200 characters of ``[A-Za-z0-9._:-]`` (safe in URLs and logs).
- A context's turns have consecutive ``seq`` numbers in the order they were stored; trimming only
  ever removes a prefix of them, so the survivors stay consecutive.
- An *exchange* is a ``user`` turn and every non-user turn after it up to the next ``user`` turn
  (its assistant answer). Turns before the first ``user`` turn form one exchange of their own.
  Trimming and windowing drop whole exchanges, oldest first, so an answer never loses its question.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple, cast, get_args

from openautoglm.core.errors import InvalidRequestError
from openautoglm.core.types import Message, Role

MAX_CONTEXT_ID_LEN = 200
MAX_LABELS = 32
MAX_LABEL_KEY_LEN = 64
MAX_LABEL_VALUE_LEN = 256
MAX_TITLE_LEN = 256
MAX_TTL_S = 10 * 365 * 24 * 3600

_CONTEXT_ID = re.compile(r"[A-Za-z0-9._:-]+")
_LABEL_KEY = re.compile(r"[A-Za-z0-9._/-]+")
_ROLES = frozenset(get_args(Role))


def validate_context_id(context_id: str, max_len: int = MAX_CONTEXT_ID_LEN) -> str:
    """Return ``context_id`` if it is 1..``max_len`` characters of ``[A-Za-z0-9._:-]``.

    Raises ``InvalidRequestError`` (code ``invalid_context_id``) otherwise.
    """
    limit = min(max_len, MAX_CONTEXT_ID_LEN)
    if (
        not isinstance(context_id, str)
        or not 1 <= len(context_id) <= limit
        or _CONTEXT_ID.fullmatch(context_id) is None
    ):
        raise InvalidRequestError(
            f"context_id must be 1-{limit} characters of letters, digits and '._:-'",
            code="invalid_context_id",
            param="context_id",
        )
    return context_id


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``labels`` if every key and value is acceptable; ``InvalidRequestError`` if not."""
    if len(labels) > MAX_LABELS:
        raise InvalidRequestError(
            f"at most {MAX_LABELS} labels are allowed", code="invalid_labels", param="labels"
        )
    for key, value in labels.items():
        if (
            not isinstance(key, str)
            or not 1 <= len(key) <= MAX_LABEL_KEY_LEN
            or _LABEL_KEY.fullmatch(key) is None
        ):
            raise InvalidRequestError(
                f"label key {key!r} must be 1-{MAX_LABEL_KEY_LEN} characters of "
                "letters, digits and '._/-'",
                code="invalid_labels",
                param="labels",
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_LEN:
            raise InvalidRequestError(
                f"label {key!r} must have a string value of at most {MAX_LABEL_VALUE_LEN} "
                "characters",
                code="invalid_labels",
                param="labels",
            )
    return dict(labels)


def validate_limits(*, max_turns: int | None, ttl_s: int | None, title: str | None) -> None:
    """Refuse a ``max_turns`` below 1, a ``ttl_s`` outside 1..10 years, or an overlong title."""
    if max_turns is not None and (isinstance(max_turns, bool) or max_turns < 1):
        raise InvalidRequestError(
            "max_turns must be at least 1", code="invalid_max_turns", param="max_turns"
        )
    if ttl_s is not None and (isinstance(ttl_s, bool) or not 1 <= ttl_s <= MAX_TTL_S):
        raise InvalidRequestError(
            f"ttl_s must be between 1 and {MAX_TTL_S}", code="invalid_ttl", param="ttl_s"
        )
    if title is not None and len(title) > MAX_TITLE_LEN:
        raise InvalidRequestError(
            f"title must be at most {MAX_TITLE_LEN} characters", code="invalid_title", param="title"
        )


def expiry(moment: datetime, ttl_s: int | None) -> datetime | None:
    """When a context touched at ``moment`` expires (sliding TTL); ``None`` means never."""
    return None if ttl_s is None else moment + timedelta(seconds=ttl_s)


@dataclass(frozen=True, slots=True)
class Context:
    """A conversation session of one tenant. ``labels`` is never mutated after construction.

    ``expires_at`` is ``updated_at + ttl_s`` (or ``None``): every stored turn slides it forward. A
    context whose ``expires_at`` is at or before *now* is absent for every read.
    """

    id: str
    tenant_id: str
    created_at: datetime
    updated_at: datetime
    title: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    system_prompt: str | None = None
    max_turns: int | None = None
    ttl_s: int | None = None
    expires_at: datetime | None = None
    num_turns: int = 0

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether every ``labels`` pair is among this context's labels."""
        return not labels or all(self.labels.get(k) == v for k, v in labels.items())


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored message of a context; ``seq`` is 1-based and unique within the context."""

    context_id: str
    seq: int
    role: Role
    content: str
    num_tokens: int | None
    created_at: datetime
    request_id: str | None = None

    def to_message(self) -> Message:
        return Message(role=self.role, content=self.content)


class NewTurn(NamedTuple):
    """A turn to append; plain ``(role, content, num_tokens, request_id)`` tuples work too."""

    role: Role
    content: str
    num_tokens: int | None = None
    request_id: str | None = None


def coerce_new_turns(turns: Sequence[tuple[str, str, int | None, str | None]]) -> list[NewTurn]:
    """``turns`` as ``NewTurn`` values; ``InvalidRequestError`` if empty or a role is unknown."""
    if not turns:
        raise InvalidRequestError("there are no turns to append", code="invalid_turns")
    checked: list[NewTurn] = []
    for role, content, num_tokens, request_id in turns:
        if role not in _ROLES or not isinstance(content, str):
            raise InvalidRequestError(
                f"a turn needs a role of {sorted(_ROLES)} and text content", code="invalid_turns"
            )
        checked.append(NewTurn(cast(Role, role), content, num_tokens, request_id))
    return checked


def split_exchanges(turns: Sequence[Turn]) -> list[list[Turn]]:
    """Group ``turns`` (in seq order) into exchanges, as the module docstring defines them."""
    groups: list[list[Turn]] = []
    for turn in turns:
        if turn.role == "user" or not groups:
            groups.append([turn])
        else:
            groups[-1].append(turn)
    return groups


def num_turns_to_trim(roles: Sequence[str], max_turns: int | None) -> int:
    """How many of the oldest turns (with these ``roles``, in seq order) to delete.

    The result removes whole exchanges only, as few as bring the count to ``max_turns`` or below,
    but never the newest exchange: if that one alone is longer than ``max_turns``, it is kept whole
    and the context briefly holds more than ``max_turns`` turns.
    """
    if max_turns is None or len(roles) <= max_turns:
        return 0
    starts = [i for i, role in enumerate(roles) if i == 0 or role == "user"]
    for start in starts[1:]:
        if len(roles) - start <= max_turns:
            return start
    return starts[-1]
