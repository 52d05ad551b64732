"""SQL adapter of ``contexts.ports.ContextStore`` (SQLite and PostgreSQL).

How appends stay atomic across replicas: ``append_turns`` opens with one ``UPDATE`` of the
context's row that bumps its ``last_seq`` counter and returns the new value. That statement takes
the row's write lock (PostgreSQL) or the database's write lock (SQLite, whose first statement of a
transaction is then a write, so it waits on ``busy_timeout`` instead of failing), so a concurrent
append waits until this transaction commits and then numbers its turns after ours. The primary key
``(context_key, seq)`` is the backstop: a collision aborts the transaction as ``ConflictError``
with nothing stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openautoglm.contexts.model import (
    Context,
    Turn,
    coerce_new_turns,
    expiry,
    num_turns_to_trim,
)
from openautoglm.contexts.ports import (
    ContextPage,
    TurnInput,
    check_limit,
    context_not_found,
    decode_cursor,
    encode_cursor,
)
from openautoglm.core.errors import ConflictError
from openautoglm.core.ids import new_object_id
from openautoglm.store.database import shielded, write_transaction
from openautoglm.store.tables import context_turns, contexts
from openautoglm.store.times import aware, to_utc

_DELETE_CHUNK = 500


def _labels_text(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True)


def _like_label(key: str, value: str) -> str:
    # Matches the ``"key": "value"`` pair inside ``_labels_text``; a superset test, checked after.
    needle = f"{json.dumps(key)}: {json.dumps(value)}"
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _context(row: Any) -> Context:
    return Context(
        id=row.context_id,
        tenant_id=row.tenant_id,
        created_at=aware(row.created_at) or row.created_at,
        updated_at=aware(row.updated_at) or row.updated_at,
        title=row.title,
        labels=json.loads(row.labels),
        system_prompt=row.system_prompt,
        max_turns=row.max_turns,
        ttl_s=row.ttl_s,
        expires_at=aware(row.expires_at),
        num_turns=row.num_turns,
    )


def _turn(context_id: str, row: Any) -> Turn:
    return Turn(
        context_id=context_id,
        seq=row.seq,
        role=row.role,
        content=row.content,
        num_tokens=row.num_tokens,
        created_at=aware(row.created_at) or row.created_at,
        request_id=row.request_id,
    )


def _is_live(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is None or expires_at > now


def _live(now: datetime) -> ColumnElement[bool]:
    return or_(contexts.c.expires_at.is_(None), contexts.c.expires_at > now)


def _named(tenant_id: str, context_id: str) -> ColumnElement[bool]:
    return and_(contexts.c.tenant_id == tenant_id, contexts.c.context_id == context_id)


async def _delete_where(
    connection: AsyncConnection, condition: ColumnElement[bool]
) -> Sequence[Any]:
    """Delete matching contexts, then their turns (explicitly: SQLite may run without FKs)."""
    rows = (
        await connection.execute(
            delete(contexts).where(condition).returning(contexts.c.key, contexts.c.expires_at)
        )
    ).all()
    keys = [row.key for row in rows]
    for start in range(0, len(keys), _DELETE_CHUNK):
        chunk = keys[start : start + _DELETE_CHUNK]
        await connection.execute(
            delete(context_turns).where(context_turns.c.context_key.in_(chunk))
        )
    return rows


class SqlContextStore:
    """Contexts and turns in the relational store; each call is its own transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @shielded
    async def create(self, context: Context) -> None:
        now = to_utc(context.created_at)
        try:
            async with write_transaction(self._engine) as connection:
                expired = and_(
                    _named(context.tenant_id, context.id),
                    contexts.c.expires_at.is_not(None),
                    contexts.c.expires_at <= now,
                )
                await _delete_where(connection, expired)
                await connection.execute(
                    insert(contexts).values(
                        key=new_object_id("ctx"),
                        tenant_id=context.tenant_id,
                        context_id=context.id,
                        title=context.title,
                        labels=_labels_text(context.labels),
                        system_prompt=context.system_prompt,
                        max_turns=context.max_turns,
                        ttl_s=context.ttl_s,
                        created_at=now,
                        updated_at=to_utc(context.updated_at),
                        expires_at=None
                        if context.expires_at is None
                        else to_utc(context.expires_at),
                        num_turns=0,
                        last_seq=0,
                    )
                )
        except IntegrityError as exc:
            raise ConflictError(
                f"context '{context.id}' already exists", code="context_exists"
            ) from exc

    @shielded
    async def get(self, tenant_id: str, context_id: str, *, now: datetime) -> Context | None:
        query = select(contexts).where(_named(tenant_id, context_id), _live(to_utc(now)))
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _context(row)

    @shielded
    async def delete(self, tenant_id: str, context_id: str, *, now: datetime) -> bool:
        moment = to_utc(now)
        async with write_transaction(self._engine) as connection:
            rows = await _delete_where(connection, _named(tenant_id, context_id))
        return any(_is_live(aware(row.expires_at), moment) for row in rows)

    @shielded
    async def turns(self, tenant_id: str, context_id: str, *, now: datetime) -> list[Turn]:
        query = (
            select(context_turns)
            .join(contexts, contexts.c.key == context_turns.c.context_key)
            .where(_named(tenant_id, context_id), _live(to_utc(now)))
            .order_by(context_turns.c.seq)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_turn(context_id, row) for row in rows]

    @shielded
    async def append_turns(
        self, tenant_id: str, context_id: str, turns: Sequence[TurnInput], now: datetime
    ) -> list[Turn]:
        new_turns = coerce_new_turns(turns)
        moment = to_utc(now)
        try:
            async with write_transaction(self._engine) as connection:
                # First statement is the write that claims the seqs (see the module docstring).
                claimed = (
                    await connection.execute(
                        update(contexts)
                        .where(_named(tenant_id, context_id), _live(moment))
                        .values(last_seq=contexts.c.last_seq + len(new_turns))
                        .returning(
                            contexts.c.key,
                            contexts.c.last_seq,
                            contexts.c.num_turns,
                            contexts.c.max_turns,
                            contexts.c.ttl_s,
                        )
                    )
                ).first()
                if claimed is None:
                    raise context_not_found(context_id)
                first = claimed.last_seq - len(new_turns) + 1
                added = [
                    Turn(
                        context_id, first + i, t.role, t.content, t.num_tokens, moment, t.request_id
                    )
                    for i, t in enumerate(new_turns)
                ]
                await connection.execute(
                    insert(context_turns),
                    [
                        {
                            "context_key": claimed.key,
                            "seq": turn.seq,
                            "role": turn.role,
                            "content": turn.content,
                            "num_tokens": turn.num_tokens,
                            "created_at": moment,
                            "request_id": turn.request_id,
                        }
                        for turn in added
                    ],
                )
                num_turns = await self._trim(
                    connection, claimed.key, claimed.num_turns + len(added), claimed.max_turns
                )
                await connection.execute(
                    update(contexts)
                    .where(contexts.c.key == claimed.key)
                    .values(
                        num_turns=num_turns,
                        updated_at=moment,
                        expires_at=expiry(moment, claimed.ttl_s),
                    )
                )
        except IntegrityError as exc:
            raise ConflictError(
                f"context '{context_id}' was changed concurrently; nothing was stored",
                code="context_conflict",
            ) from exc
        return added

    @staticmethod
    async def _trim(
        connection: AsyncConnection, key: str, num_turns: int, max_turns: int | None
    ) -> int:
        """Delete the oldest whole exchanges over ``max_turns``; the number of turns left."""
        if max_turns is None or num_turns <= max_turns:
            return num_turns
        rows = (
            await connection.execute(
                select(context_turns.c.seq, context_turns.c.role)
                .where(context_turns.c.context_key == key)
                .order_by(context_turns.c.seq)
            )
        ).all()
        num_dropped = num_turns_to_trim([row.role for row in rows], max_turns)
        if num_dropped:
            await connection.execute(
                delete(context_turns).where(
                    context_turns.c.context_key == key,
                    context_turns.c.seq <= rows[num_dropped - 1].seq,
                )
            )
        return len(rows) - num_dropped

    @shielded
    async def purge_expired(self, now: datetime) -> int:
        moment = to_utc(now)
        expired = and_(contexts.c.expires_at.is_not(None), contexts.c.expires_at <= moment)
        async with write_transaction(self._engine) as connection:
            rows = await _delete_where(connection, expired)
        return len(rows)

    # ``list`` comes last: a method of that name shadows the builtin in later annotations.
    @shielded
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
        position = decode_cursor(cursor) if cursor is not None else None
        label_pairs = (labels or {}).items()
        query = (
            select(contexts)
            .where(contexts.c.tenant_id == tenant_id, _live(to_utc(now)))
            .where(
                *(contexts.c.labels.like(_like_label(k, v), escape="\\") for k, v in label_pairs)
            )
            .order_by(contexts.c.created_at.desc(), contexts.c.context_id.desc())
            .limit(limit + 1)
        )
        found: list[Context] = []
        async with self._engine.connect() as connection:
            # LIKE is only a prefilter (SQLite's is case-blind), so scan batches until enough match.
            while len(found) <= limit:
                batch_query = query
                if position is not None:
                    created_at, last_id = to_utc(position[0]), position[1]
                    batch_query = query.where(
                        or_(
                            contexts.c.created_at < created_at,
                            and_(
                                contexts.c.created_at == created_at,
                                contexts.c.context_id < last_id,
                            ),
                        )
                    )
                batch = [_context(row) for row in (await connection.execute(batch_query)).all()]
                found += [c for c in batch if c.matches(labels)]
                if len(batch) <= limit:
                    break
                position = (batch[-1].created_at, batch[-1].id)
        page = tuple(found[:limit])
        return ContextPage(page, encode_cursor(page[-1]) if len(found) > limit else None)
