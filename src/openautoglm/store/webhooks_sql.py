"""The webhook outbox on SQL (SQLite and PostgreSQL): deliveries written with their event.

:func:`enqueue` writes on the caller's connection, inside the caller's transaction: the event and
its deliveries commit together or not at all, so no event is announced that did not happen and
none is lost between the commit and the send.

How a claim stays exclusive across replicas: :meth:`SqlWebhookOutbox.claim_due` is one ``UPDATE``
that pushes the due rows' ``next_attempt_at`` past the lease and counts the attempt, returning
them. On PostgreSQL its subquery locks the rows ``FOR UPDATE SKIP LOCKED``, so a concurrent claim
skips them rather than waiting; on SQLite the ``UPDATE`` takes the database's write lock first,
so claims run one after another and the second no longer sees the rows as due.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, get_args

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openautoglm.config.registry import WebhookConfig, WebhookEvent
from openautoglm.core.ids import new_object_id
from openautoglm.registry.model import OutboxEvent
from openautoglm.registry.webhooks import Delivery, envelope, is_subscribed
from openautoglm.store.database import shielded, write_transaction
from openautoglm.store.tables import webhook_deliveries
from openautoglm.store.times import aware, to_utc

WEBHOOK_EVENTS: frozenset[str] = frozenset(get_args(WebhookEvent))


async def enqueue(
    connection: AsyncConnection,
    webhooks: Sequence[WebhookConfig],
    event: str,
    data: Mapping[str, Any],
    at: datetime,
) -> list[str]:
    """Add one delivery of ``event`` per subscribed webhook, due at ``at``; their ids.

    Runs on ``connection`` inside the caller's transaction (see the module docstring).
    """
    if event not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; known: {sorted(WEBHOOK_EVENTS)}")
    moment = to_utc(at)
    rows: list[dict[str, Any]] = []
    for webhook in webhooks:
        if not is_subscribed(webhook, event):
            continue
        delivery_id = new_object_id("whd")
        rows.append(
            {
                "id": delivery_id,
                "webhook": webhook.name,
                "event": event,
                "payload": envelope(delivery_id, event, data, moment),
                "attempts": 0,
                "next_attempt_at": moment,
                "delivered_at": None,
                "last_error": None,
                "created_at": moment,
            }
        )
    if rows:
        await connection.execute(insert(webhook_deliveries), rows)
    return [row["id"] for row in rows]


class OutboxWriter:
    """What a store needs to announce its changes: the configured webhooks, and who to wake
    once a transaction that wrote deliveries has committed."""

    def __init__(
        self, webhooks: Sequence[WebhookConfig] = (), notify: Callable[[], None] | None = None
    ) -> None:
        self._webhooks = tuple(webhooks)
        self._notify = notify

    async def write(
        self, connection: AsyncConnection, events: Sequence[OutboxEvent], at: datetime
    ) -> None:
        """Enqueue every event inside the caller's transaction."""
        for event in events:
            await enqueue(connection, self._webhooks, event.event, event.data, at)

    def committed(self, events: Sequence[OutboxEvent]) -> None:
        """The transaction that wrote ``events`` committed: send now rather than at the poll."""
        if events and self._webhooks and self._notify is not None:
            self._notify()


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        webhook=row.webhook,
        event=row.event,
        payload=row.payload,
        attempts=row.attempts,
        next_attempt_at=aware(row.next_attempt_at),
        delivered_at=aware(row.delivered_at),
        last_error=row.last_error,
        created_at=aware(row.created_at),
    )


class SqlWebhookOutbox:
    """SQL adapter of ``registry.webhooks.WebhookOutbox``, plus a listing for the admin API."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @shielded
    async def claim_due(self, now: datetime, limit: int, lease_s: float) -> builtins.list[Delivery]:
        """Up to ``limit`` deliveries due at ``now``, oldest first, each leased and counted.

        A leased delivery is due again at ``now + lease_s`` unless marked before then.
        """
        moment = to_utc(now)
        table = webhook_deliveries
        due = (
            select(table.c.id)
            .where(table.c.next_attempt_at.is_not(None), table.c.next_attempt_at <= moment)
            .order_by(table.c.next_attempt_at, table.c.id)
            .limit(limit)
        )
        async with write_transaction(self._engine) as connection:
            if connection.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            claim = (
                update(table)
                # Rechecked on the row as it is when locked: a row claimed meanwhile is skipped.
                .where(table.c.id.in_(due.scalar_subquery()), table.c.next_attempt_at <= moment)
                .values(
                    next_attempt_at=moment + timedelta(seconds=lease_s),
                    attempts=table.c.attempts + 1,
                )
                .returning(*table.c)
            )
            rows = (await connection.execute(claim)).all()
        claimed = [_delivery(row) for row in rows]
        return sorted(claimed, key=lambda delivery: (delivery.created_at, delivery.id))

    @shielded
    async def mark_delivered(self, delivery_id: str, at: datetime) -> None:
        """The receiver accepted the delivery at ``at``: it is finished."""
        async with write_transaction(self._engine) as connection:
            await connection.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(delivered_at=to_utc(at), next_attempt_at=None)
            )

    @shielded
    async def mark_failed(
        self, delivery_id: str, error: str, next_attempt_at: datetime | None
    ) -> None:
        """An attempt failed with ``error``; try again at ``next_attempt_at`` (None: give up)."""
        retry_at = None if next_attempt_at is None else to_utc(next_attempt_at)
        async with write_transaction(self._engine) as connection:
            await connection.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(last_error=error, next_attempt_at=retry_at)
            )

    async def get(self, delivery_id: str) -> Delivery | None:
        """One delivery by id, if it exists."""
        query = select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _delivery(row)

    # ``list`` comes last: a method of that name shadows the builtin in later annotations.
    async def list(
        self, limit: int = 50, undelivered_only: bool = False
    ) -> builtins.list[Delivery]:
        """The newest deliveries first; ``undelivered_only``: pending and given-up ones only."""
        table = webhook_deliveries
        query = select(table).order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
        if undelivered_only:
            query = query.where(table.c.delivered_at.is_(None))
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_delivery(row) for row in rows]
