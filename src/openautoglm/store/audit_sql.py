"""SQL adapter of ``audit.ports.AuditStore`` (SQLite and PostgreSQL).

How the chain stays linear across writers: ``append`` runs in one write transaction that first
takes the chain lock, then reads the head, chains the batch after it and inserts it. On
PostgreSQL the lock is ``pg_advisory_xact_lock`` (held to commit, so the next writer's head read
sees this batch). On SQLite the first statement is a no-op ``UPDATE``, which takes the database's
write lock at once (waiting on ``busy_timeout``): a read first would pin a snapshot that another
process's commit could make stale. The primary key on ``seq`` is the backstop.

What verification trusts: the hashed ``payload``. The indexed columns (``tenant_id``, ``status``,
…) and the ``audit_event_rules`` rows are copies made for filtering; ``links`` reports a row whose
copies differ from its payload as a defect, so editing any column is detected as well as editing
the payload. A copy longer than its column is stored cut to the column's length, and compared so.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import ColumnElement, Select, and_, delete, insert, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openautoglm.audit.chain import StoredLink, decode_payload, event_from_payload, link, parse_time
from openautoglm.audit.model import AuditEvent, AuditRecord, ChainHead, rule_ids_of
from openautoglm.audit.ports import (
    AuditPage,
    AuditQuery,
    AuditStoreError,
    Order,
    check_page_limit,
    decode_cursor,
    encode_cursor,
)
from openautoglm.audit.signing import Checkpoint
from openautoglm.store.database import shielded, write_transaction
from openautoglm.store.tables import audit_checkpoints, audit_event_rules, audit_events
from openautoglm.store.times import aware, to_utc

P = ParamSpec("P")
T = TypeVar("T")
_CHAIN_LOCK_ID = 0x41554449544C4F47  # "AUDITLOG"
# Indexed copies of payload fields, with the length of their column.
_COPIES: dict[str, int | None] = {
    "request_id": 64,
    "kind": 16,
    "endpoint": 200,
    "status": None,
    "tenant_id": 64,
    "key_id": 64,
    "model": 200,
    "error_code": 64,
}
_RULE_LENGTH = 200


def _errors_as_unavailable(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Database and network failures surface as ``AuditStoreError`` (the port's one error)."""

    @functools.wraps(method)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (SQLAlchemyError, OSError) as exc:
            raise AuditStoreError(f"audit store failed: {type(exc).__name__}: {exc}") from exc

    return translated


def _fit(value: Any, length: int | None) -> Any:
    if length is None or not isinstance(value, str):
        return value
    return value[:length]


def event_row(event: AuditEvent, payload: bytes) -> dict[str, Any]:
    """The ``audit_events`` row of a chained event (``payload``: the bytes its hash covers)."""
    record = event.record
    row = {name: _fit(getattr(record, name), length) for name, length in _COPIES.items()}
    row.update(
        seq=event.seq,
        occurred_at=to_utc(record.occurred_at),
        payload=payload.decode("utf-8"),
        prev_hash=event.prev_hash,
        hash=event.hash,
    )
    return row


def rule_rows(event: AuditEvent) -> list[dict[str, Any]]:
    """The ``audit_event_rules`` rows of an event: one per distinct rule."""
    rules = dict.fromkeys(_fit(rule, _RULE_LENGTH) for rule in event.record.rule_ids)
    tenant_id = _fit(event.record.tenant_id, _COPIES["tenant_id"])
    return [{"seq": event.seq, "rule_id": rule, "tenant_id": tenant_id} for rule in rules]


def _defect(row: Any, rules: Mapping[str, str | None]) -> str | None:
    """Why ``row`` disagrees with its own payload, or ``None``. (Runs for every event verified.)"""
    where = f"event {row.seq}"
    stored = row._mapping
    try:
        document = decode_payload(stored["payload"])
        for name in ("seq", "prev_hash"):
            if document.get(name) != stored[name]:
                return f"column '{name}' of {where} does not match its hashed payload"
        for name, length in _COPIES.items():
            copied = document.get(name)
            if length is not None and isinstance(copied, str) and len(copied) > length:
                copied = copied[:length]
            if copied != stored[name]:
                return f"column '{name}' of {where} does not match its hashed payload"
        if parse_time(document["occurred_at"]) != aware(stored["occurred_at"]):
            return f"column 'occurred_at' of {where} does not match its hashed payload"
        tenant_id = _fit(document.get("tenant_id"), _COPIES["tenant_id"])
        expected = {_fit(r, _RULE_LENGTH): tenant_id for r in rule_ids_of(document["decisions"])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"payload of {where} is not a valid audit payload"
    if rules != expected:
        return f"policy rule index of {where} does not match its hashed payload"
    return None


def _filters(query: AuditQuery) -> list[ColumnElement[bool]]:
    c = audit_events.c
    conditions: list[ColumnElement[bool]] = []
    if query.since is not None:
        conditions.append(c.occurred_at >= to_utc(query.since))
    if query.until is not None:
        conditions.append(c.occurred_at < to_utc(query.until))
    for name in ("tenant_id", "key_id", "model", "status", "kind"):
        value = getattr(query, name)
        if value is not None:
            conditions.append(c[name] == _fit(value, _COPIES[name]))
    return conditions


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        seq=row.seq,
        hash=row.hash,
        created_at=aware(row.created_at),
        kind=row.kind,
        key_fingerprint=row.key_fingerprint,
        signature=row.signature,
    )


async def _take_chain_lock(connection: AsyncConnection) -> None:
    """Serialise chain writers until this transaction ends (see the module docstring)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _CHAIN_LOCK_ID})
    else:
        await connection.execute(text("UPDATE audit_events SET seq = seq WHERE 1 = 0"))


async def _head(connection: AsyncConnection) -> ChainHead | None:
    row = (
        await connection.execute(
            select(audit_events.c.seq, audit_events.c.hash)
            .order_by(audit_events.c.seq.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else ChainHead(row.seq, row.hash)


class SqlAuditStore:
    """Chained audit events and checkpoints in the relational store."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @_errors_as_unavailable
    @shielded
    async def append(self, records: Sequence[AuditRecord]) -> list[AuditEvent]:
        if not records:
            return []
        async with write_transaction(self._engine) as connection:
            await _take_chain_lock(connection)
            linked = link(records, await _head(connection))
            await connection.execute(
                insert(audit_events), [event_row(each.event, each.payload) for each in linked]
            )
            rules = [row for each in linked for row in rule_rows(each.event)]
            if rules:
                await connection.execute(insert(audit_event_rules), rules)
        return [each.event for each in linked]

    @_errors_as_unavailable
    @shielded
    async def head(self) -> ChainHead | None:
        async with self._engine.connect() as connection:
            return await _head(connection)

    @_errors_as_unavailable
    @shielded
    async def first_seq(self) -> int | None:
        async with self._engine.connect() as connection:
            first: int | None = await connection.scalar(
                select(audit_events.c.seq).order_by(audit_events.c.seq).limit(1)
            )
        return first

    @_errors_as_unavailable
    @shielded
    async def links(self, after_seq: int, limit: int) -> list[StoredLink]:
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(audit_events)
                    .where(audit_events.c.seq > after_seq)
                    .order_by(audit_events.c.seq)
                    .limit(limit)
                )
            ).all()
            if not rows:
                return []
            rule_rows = await connection.execute(
                select(audit_event_rules).where(
                    audit_event_rules.c.seq > after_seq, audit_event_rules.c.seq <= rows[-1].seq
                )
            )
            rules: dict[int, dict[str, str | None]] = defaultdict(dict)
            for rule in rule_rows:
                rules[rule.seq][rule.rule_id] = rule.tenant_id
        return [
            StoredLink(
                row.seq,
                row.prev_hash,
                row.hash,
                row.payload.encode("utf-8"),
                _defect(row, rules.get(row.seq, {})),
            )
            for row in rows
        ]

    @_errors_as_unavailable
    @shielded
    async def page(
        self,
        query: AuditQuery,
        *,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "desc",
    ) -> AuditPage:
        check_page_limit(limit)
        position = decode_cursor(cursor, order) if cursor is not None else None
        statement = self._select(query, order, position).limit(limit + 1)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        events = tuple(event_from_payload(row.payload, row.hash) for row in rows[:limit])
        more = len(rows) > limit
        return AuditPage(events, encode_cursor(events[-1].seq, order) if more else None)

    @staticmethod
    def _select(query: AuditQuery, order: Order, position: int | None) -> Select[Any]:
        # With a rule filter, order by the rule index's seq so its (rule_id, seq) index is read
        # in order instead of sorting every event of the rule.
        events = audit_events.c
        statement = select(events.seq, events.payload, events.hash).where(*_filters(query))
        seq = events.seq
        if query.rule is not None:
            rules = audit_event_rules.c
            on = [rules.seq == events.seq, rules.rule_id == _fit(query.rule, _RULE_LENGTH)]
            if query.tenant_id is not None:
                on.append(rules.tenant_id == _fit(query.tenant_id, _COPIES["tenant_id"]))
            statement = statement.join(audit_event_rules, and_(*on))
            seq = rules.seq
        if position is not None:
            statement = statement.where(seq > position if order == "asc" else seq < position)
        return statement.order_by(seq.asc() if order == "asc" else seq.desc())

    @_errors_as_unavailable
    @shielded
    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        async with write_transaction(self._engine) as connection:
            await connection.execute(
                insert(audit_checkpoints).values(**_checkpoint_row(checkpoint))
            )

    @_errors_as_unavailable
    @shielded
    async def checkpoints(self) -> list[Checkpoint]:
        c = audit_checkpoints.c
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(audit_checkpoints).order_by(c.seq, c.id))
            return [_checkpoint(row) for row in rows]

    @_errors_as_unavailable
    @shielded
    async def latest_checkpoint(self) -> Checkpoint | None:
        c = audit_checkpoints.c
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(audit_checkpoints).order_by(c.seq.desc(), c.id.desc()).limit(1)
                )
            ).first()
        return None if row is None else _checkpoint(row)

    @_errors_as_unavailable
    @shielded
    async def prune_point(self, before: datetime, max_events: int = 10_000) -> ChainHead | None:
        c = audit_events.c
        async with self._engine.connect() as connection:
            first = await connection.scalar(select(c.seq).order_by(c.seq).limit(1))
            if first is None:
                return None
            # Walk from the oldest event: the scan is as long as what is pruned, not the log.
            young = await connection.scalar(
                select(c.seq)
                .where(c.seq < first + max_events, c.occurred_at >= to_utc(before))
                .order_by(c.seq)
                .limit(1)
            )
            last = first + max_events - 1 if young is None else young - 1
            row = (
                await connection.execute(
                    select(c.seq, c.hash).where(c.seq <= last).order_by(c.seq.desc()).limit(1)
                )
            ).first()
        return None if row is None else ChainHead(row.seq, row.hash)

    @_errors_as_unavailable
    @shielded
    async def prune(self, anchor: Checkpoint) -> int:
        async with write_transaction(self._engine) as connection:
            await _take_chain_lock(connection)
            stored = await connection.scalar(
                select(audit_events.c.hash).where(audit_events.c.seq == anchor.seq)
            )
            if stored != anchor.hash:
                return 0  # already pruned by another replica, or not this chain's event
            await connection.execute(insert(audit_checkpoints).values(**_checkpoint_row(anchor)))
            deleted = await connection.execute(
                delete(audit_events).where(audit_events.c.seq <= anchor.seq)
            )
            await connection.execute(
                delete(audit_event_rules).where(audit_event_rules.c.seq <= anchor.seq)
            )
            await connection.execute(
                delete(audit_checkpoints).where(audit_checkpoints.c.seq < anchor.seq)
            )
        return int(deleted.rowcount)


def _checkpoint_row(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "created_at": to_utc(checkpoint.created_at),
        "kind": checkpoint.kind,
        "key_fingerprint": checkpoint.key_fingerprint,
        "signature": checkpoint.signature,
    }
