"""The store port the audit log needs, its in-memory adapter, and the page cursor.

Contract of every ``AuditStore`` (checked by ``tests/unit/store/test_audit_sql.py``):

- ``append`` chains a batch after the current head and stores it atomically: all or nothing.
  Concurrent appenders (several logs, several processes) never fork the chain: seqs stay
  gapless and each event's ``prev_hash`` is the hash of the event before it.
- A store that cannot be reached raises ``AuditStoreError``; nothing was stored.
- ``links`` returns stored events in seq order exactly as stored, for verification; a store
  with more than the payload (indexed columns) marks a row whose columns disagree with its
  payload in ``StoredLink.defect``.
- ``page`` lists matching events by seq, newest first by default; a cursor is a seq position,
  so pages neither repeat nor skip events, whatever is appended meanwhile.
- ``prune`` stores its anchor checkpoint and deletes every event up to the anchor's seq in one
  transaction; it never deletes past an event whose hash differs from the anchor's.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from openautoglm.audit.chain import StoredLink, link
from openautoglm.audit.model import AuditEvent, AuditRecord, ChainHead, Kind
from openautoglm.audit.signing import Checkpoint
from openautoglm.core.errors import InvalidRequestError, ServiceUnavailableError

Order = Literal["desc", "asc"]
MAX_PAGE = 1000


class AuditStoreError(ServiceUnavailableError):
    """The store failed or could not be reached; nothing of the call was stored (503)."""

    code = "audit_store_unavailable"


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of a listing or export; ``None`` means any. ``since`` ≤ occurred_at < ``until``."""

    since: datetime | None = None
    until: datetime | None = None
    tenant_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    status: int | None = None
    rule: str | None = None
    kind: Kind | None = None

    def matches(self, event: AuditEvent) -> bool:
        record = event.record
        return (
            (self.since is None or record.occurred_at >= self.since)
            and (self.until is None or record.occurred_at < self.until)
            and (self.tenant_id is None or record.tenant_id == self.tenant_id)
            and (self.key_id is None or record.key_id == self.key_id)
            and (self.model is None or record.model == self.model)
            and (self.status is None or record.status == self.status)
            and (self.rule is None or self.rule in record.rule_ids)
            and (self.kind is None or record.kind == self.kind)
        )


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of events; ``next_cursor`` is ``None`` on the last page."""

    events: tuple[AuditEvent, ...]
    next_cursor: str | None = None


def encode_cursor(seq: int, order: Order) -> str:
    """An opaque cursor pointing just past ``seq`` in ``order``."""
    return base64.urlsafe_b64encode(f"{order}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: Order) -> int:
    """The seq of a cursor; ``InvalidRequestError`` (``invalid_cursor``) if garbled or if it was
    made for the other order."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        made_for, _, seq = raw.partition(":")
        position = int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequestError("cursor is not valid", code="invalid_cursor") from exc
    if made_for != order or position < 0:
        raise InvalidRequestError("cursor is not valid for this order", code="invalid_cursor")
    return position


def check_page_limit(limit: int) -> None:
    if isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE}", code="invalid_limit")


class AuditStore(Protocol):
    """Where chained events and checkpoints live. The SQL adapter is ``store.audit_sql``."""

    async def append(self, records: Sequence[AuditRecord]) -> list[AuditEvent]:
        """Chain ``records`` after the head and store them in one transaction."""

    async def head(self) -> ChainHead | None:
        """The newest event's seq and hash; ``None`` for an empty log."""

    async def first_seq(self) -> int | None:
        """The oldest stored event's seq; ``None`` for an empty log."""

    async def links(self, after_seq: int, limit: int) -> list[StoredLink]:
        """Up to ``limit`` stored events with seq > ``after_seq``, in seq order."""

    async def page(
        self,
        query: AuditQuery,
        *,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "desc",
    ) -> AuditPage:
        """Matching events in seq ``order``, at most ``limit`` (1..1000)."""

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    async def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, by seq."""

    async def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint with the highest seq, if any."""

    async def prune_point(self, before: datetime, max_events: int = 10_000) -> ChainHead | None:
        """The last event of the oldest run of at most ``max_events`` events that all occurred
        before ``before``; ``None`` if the oldest event is not that old."""

    async def prune(self, anchor: Checkpoint) -> int:
        """Store ``anchor`` and delete events with seq ≤ its seq (and older checkpoints);
        how many events were deleted."""


class InMemoryAuditStore:
    """A list-backed ``AuditStore``; same contract as the SQL one.

    No method awaits anything, so on one event loop each call is atomic.
    """

    def __init__(self) -> None:
        self._links: list[StoredLink] = []
        self._events: list[AuditEvent] = []
        self._checkpoints: list[Checkpoint] = []

    async def append(self, records: Sequence[AuditRecord]) -> list[AuditEvent]:
        linked = link(records, await self.head())
        for each in linked:
            event = each.event
            self._links.append(StoredLink(event.seq, event.prev_hash, event.hash, each.payload))
            self._events.append(event)
        return [each.event for each in linked]

    async def head(self) -> ChainHead | None:
        if not self._events:
            return None
        return ChainHead(self._events[-1].seq, self._events[-1].hash)

    async def first_seq(self) -> int | None:
        return self._events[0].seq if self._events else None

    async def links(self, after_seq: int, limit: int) -> list[StoredLink]:
        return [each for each in self._links if each.seq > after_seq][:limit]

    async def page(
        self,
        query: AuditQuery,
        *,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "desc",
    ) -> AuditPage:
        check_page_limit(limit)
        events = self._events if order == "asc" else list(reversed(self._events))
        if cursor is not None:
            position = decode_cursor(cursor, order)
            events = [
                e for e in events if (e.seq > position if order == "asc" else e.seq < position)
            ]
        found = [e for e in events if query.matches(e)][: limit + 1]
        page = tuple(found[:limit])
        more = len(found) > limit
        return AuditPage(page, encode_cursor(page[-1].seq, order) if more else None)

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._checkpoints.append(checkpoint)
        self._checkpoints.sort(key=lambda c: c.seq)

    async def checkpoints(self) -> list[Checkpoint]:
        return list(self._checkpoints)

    async def latest_checkpoint(self) -> Checkpoint | None:
        return self._checkpoints[-1] if self._checkpoints else None

    async def prune_point(self, before: datetime, max_events: int = 10_000) -> ChainHead | None:
        last: AuditEvent | None = None
        for event in self._events[:max_events]:
            if event.record.occurred_at >= before:
                break
            last = event
        return None if last is None else ChainHead(last.seq, last.hash)

    async def prune(self, anchor: Checkpoint) -> int:
        if not any(e.seq == anchor.seq and e.hash == anchor.hash for e in self._events):
            return 0
        kept = [e for e in self._events if e.seq > anchor.seq]
        deleted = len(self._events) - len(kept)
        self._events = kept
        self._links = [each for each in self._links if each.seq > anchor.seq]
        self._checkpoints = [c for c in self._checkpoints if c.seq >= anchor.seq]
        await self.add_checkpoint(anchor)
        return deleted
