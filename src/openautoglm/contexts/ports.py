"""The store port contexts need, its in-memory adapter, and the list cursor both adapters share.

Contract of every ``ContextStore`` (checked by ``tests/unit/store/test_context_store_contract.py``):

- Every method is scoped by ``tenant_id``: another tenant's context is absent, whatever its id.
- A context whose ``expires_at`` is at or before ``now`` is absent for every read, is replaced by
  ``create`` and is removed by ``purge_expired``.
- ``append_turns`` is atomic: the turns of one call get consecutive ``seq`` numbers following the
  context's last one, or none is stored. Concurrent calls on one context never interleave.
- Listing is newest first by ``(created_at, id)``; a cursor is a position in that order, so pages
  neither repeat nor skip contexts that exist throughout, whatever is inserted meanwhile.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from openautoglm.contexts.model import (
    Context,
    Turn,
    coerce_new_turns,
    expiry,
    num_turns_to_trim,
)
from openautoglm.core.errors import ConflictError, InvalidRequestError, NotFoundError

TurnInput = tuple[str, str, int | None, str | None]
"""``(role, content, num_tokens, request_id)``; ``contexts.model.NewTurn`` is one. The role is
checked when appending (``InvalidRequestError`` unless it is one of ``core.types.Role``)."""


@dataclass(frozen=True, slots=True)
class ContextPage:
    """One page of a listing; ``next_cursor`` is ``None`` on the last page."""

    items: tuple[Context, ...]
    next_cursor: str | None = None


def encode_cursor(context: Context) -> str:
    """An opaque cursor pointing just after ``context`` in the listing order."""
    raw = f"{context.created_at.isoformat()}|{context.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(created_at, id)`` of a cursor; ``InvalidRequestError`` (``invalid_cursor``) if garbled."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, context_id = raw.partition("|")
        created_at = datetime.fromisoformat(moment)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequestError("cursor is not valid", code="invalid_cursor") from exc
    if not context_id or created_at.tzinfo is None:
        raise InvalidRequestError("cursor is not valid", code="invalid_cursor")
    return created_at, context_id


def context_not_found(context_id: str) -> NotFoundError:
    return NotFoundError(f"context '{context_id}' does not exist", code="context_not_found")


class ContextStore(Protocol):
    """Contexts and their turns. The SQL adapter lives in ``store.contexts_sql``."""

    async def create(self, context: Context) -> None:
        """Insert; ``ConflictError`` (``context_exists``) if the tenant has a live one of that id.

        ``context.created_at`` is taken as *now* to decide whether an existing one has expired.
        """

    async def get(self, tenant_id: str, context_id: str, *, now: datetime) -> Context | None: ...

    async def delete(self, tenant_id: str, context_id: str, *, now: datetime) -> bool:
        """Remove the context and all its turns; whether a live one existed."""

    async def turns(self, tenant_id: str, context_id: str, *, now: datetime) -> list[Turn]:
        """The context's turns in seq order; ``[]`` if it is absent."""

    async def append_turns(
        self, tenant_id: str, context_id: str, turns: Sequence[TurnInput], now: datetime
    ) -> list[Turn]:
        """Store ``turns`` atomically with consecutive seqs; trim to ``max_turns``; slide the TTL.

        Raises ``NotFoundError`` (``context_not_found``) if the context is absent, and may raise
        ``ConflictError`` if a concurrent writer makes the append impossible (nothing is stored).
        """

    async def purge_expired(self, now: datetime) -> int:
        """Remove every tenant's expired contexts with their turns; how many were removed."""

    # ``list`` comes last: a method of that name shadows the builtin in later annotations.
    async def list(
        self,
        tenant_id: str,
        *,
        now: datetime,
        limit: int = 20,
        cursor: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ContextPage:
        """Live contexts carrying every ``labels`` pair, newest first, at most ``limit`` of them."""


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise InvalidRequestError("limit must be between 1 and 1000", code="invalid_limit")


class InMemoryContextStore:
    """A dict-backed ``ContextStore``; same contract as the SQL one.

    Every method runs without awaiting anything, so on one event loop each call is atomic.
    """

    def __init__(self) -> None:
        self._contexts: dict[tuple[str, str], Context] = {}
        self._turns: dict[tuple[str, str], list[Turn]] = {}
        self._last_seq: dict[tuple[str, str], int] = {}

    def _live(self, tenant_id: str, context_id: str, now: datetime) -> Context | None:
        context = self._contexts.get((tenant_id, context_id))
        return None if context is None or context.is_expired(now) else context

    def _remove(self, key: tuple[str, str]) -> None:
        self._contexts.pop(key, None)
        self._turns.pop(key, None)
        self._last_seq.pop(key, None)

    async def create(self, context: Context) -> None:
        key = (context.tenant_id, context.id)
        if self._live(*key, context.created_at) is not None:
            raise ConflictError(f"context '{context.id}' already exists", code="context_exists")
        self._remove(key)
        self._contexts[key] = replace(context, labels=dict(context.labels), num_turns=0)
        self._turns[key] = []
        self._last_seq[key] = 0

    async def get(self, tenant_id: str, context_id: str, *, now: datetime) -> Context | None:
        return self._live(tenant_id, context_id, now)

    async def delete(self, tenant_id: str, context_id: str, *, now: datetime) -> bool:
        existed = self._live(tenant_id, context_id, now) is not None
        self._remove((tenant_id, context_id))
        return existed

    async def turns(self, tenant_id: str, context_id: str, *, now: datetime) -> list[Turn]:
        if self._live(tenant_id, context_id, now) is None:
            return []
        return list(self._turns[(tenant_id, context_id)])

    async def append_turns(
        self, tenant_id: str, context_id: str, turns: Sequence[TurnInput], now: datetime
    ) -> list[Turn]:
        new_turns = coerce_new_turns(turns)
        key = (tenant_id, context_id)
        context = self._live(tenant_id, context_id, now)
        if context is None:
            raise context_not_found(context_id)
        first = self._last_seq[key] + 1
        added = [
            Turn(context_id, first + i, t.role, t.content, t.num_tokens, now, t.request_id)
            for i, t in enumerate(new_turns)
        ]
        stored = self._turns[key] + added
        del stored[: num_turns_to_trim([t.role for t in stored], context.max_turns)]
        self._turns[key] = stored
        self._last_seq[key] = added[-1].seq
        self._contexts[key] = replace(
            context,
            updated_at=now,
            expires_at=expiry(now, context.ttl_s),
            num_turns=len(stored),
        )
        return added

    async def purge_expired(self, now: datetime) -> int:
        expired = [key for key, c in self._contexts.items() if c.is_expired(now)]
        for key in expired:
            self._remove(key)
        return len(expired)

    # ``list`` comes last: a method of that name shadows the builtin in later annotations.
    async def list(
        self,
        tenant_id: str,
        *,
        now: datetime,
        limit: int = 20,
        cursor: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ContextPage:
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        found = sorted(
            (
                c
                for (tenant, _), c in self._contexts.items()
                if tenant == tenant_id
                and not c.is_expired(now)
                and c.matches(labels)
                and (after is None or (c.created_at, c.id) < after)
            ),
            key=lambda c: (c.created_at, c.id),
            reverse=True,
        )
        page = tuple(found[:limit])
        has_more = len(found) > limit
        return ContextPage(page, encode_cursor(page[-1]) if has_more else None)
