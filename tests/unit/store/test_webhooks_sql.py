"""The webhook outbox, SQLite and PostgreSQL: enqueue in the caller's transaction, leased claims."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.support.databases import database_url

from openautoglm.config.registry import WebhookConfig, WebhookEvent
from openautoglm.registry.webhooks import envelope
from openautoglm.store.database import create_engine, open_database, write_transaction
from openautoglm.store.webhooks_sql import SqlWebhookOutbox, enqueue

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "s3cret-s3cret-s3cret"


def hook(name: str, events: list[WebhookEvent] | None = None) -> WebhookConfig:
    return WebhookConfig(name=name, url=f"http://127.0.0.1:9/{name}", secret=SECRET, events=events)


@dataclass
class Db:
    engine: AsyncEngine
    url: str
    outbox: SqlWebhookOutbox
    replicas: list[AsyncEngine] = field(default_factory=list)

    def replica(self) -> SqlWebhookOutbox:
        """An outbox on its own engine: another process, as the database sees it."""
        engine = create_engine(self.url)
        self.replicas.append(engine)
        return SqlWebhookOutbox(engine)

    async def enqueue(
        self, webhooks: list[WebhookConfig], event: str = "alias.moved", at: datetime = T0
    ) -> list[str]:
        async with write_transaction(self.engine) as connection:
            return await enqueue(connection, webhooks, event, {"alias": "prod"}, at)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    async with database_url(request.param, tmp_path) as url:
        engine = await open_database(url)
        state = Db(engine, url, SqlWebhookOutbox(engine))
        try:
            yield state
        finally:
            for each in [engine, *state.replicas]:
                await each.dispose()


async def test_enqueue_writes_one_delivery_per_subscribed_webhook(db: Db) -> None:
    webhooks = [
        hook("all"),
        hook("aliases", ["alias.moved", "release.changed"]),
        hook("versions", ["version.transitioned"]),
    ]
    data = {"alias": "prod", "note": "模型已部署", "version": 3}
    async with write_transaction(db.engine) as connection:
        ids = await enqueue(connection, webhooks, "alias.moved", data, T0)

    deliveries = {d.id: d for d in await db.outbox.list()}
    assert set(deliveries) == set(ids) and len(ids) == 2
    assert sorted(d.webhook for d in deliveries.values()) == ["aliases", "all"]
    for delivery_id, delivery in deliveries.items():
        assert delivery.payload == envelope(delivery_id, "alias.moved", data, T0)
        assert "模型已部署" in delivery.payload  # ensure_ascii=False: stored as written
        assert json.loads(delivery.payload) == {
            "id": delivery_id,
            "event": "alias.moved",
            "occurred_at": "2026-03-01T12:00:00Z",
            "data": data,
        }
        assert delivery.attempts == 0 and delivery.last_error is None
        assert delivery.next_attempt_at == T0 and delivery.created_at == T0
        assert delivery.delivered_at is None
        assert delivery.created_at.tzinfo is not None


async def test_enqueue_commits_or_rolls_back_with_the_callers_transaction(db: Db) -> None:
    with pytest.raises(RuntimeError, match="event failed"):
        async with write_transaction(db.engine) as connection:
            await enqueue(connection, [hook("all")], "release.changed", {"release": "r1"}, T0)
            raise RuntimeError("event failed")
    assert await db.outbox.list() == []
    assert await db.enqueue([hook("versions", ["version.transitioned"])]) == []
    with pytest.raises(ValueError, match="unknown webhook event"):
        await db.enqueue([hook("all")], event="alias.mooved")


async def test_claim_leases_a_delivery_until_the_lease_expires(db: Db) -> None:
    [delivery_id] = await db.enqueue([hook("all")])
    assert await db.outbox.claim_due(T0 - timedelta(seconds=1), 10, lease_s=30) == []

    [claimed] = await db.outbox.claim_due(T0, 10, lease_s=30)
    assert (claimed.id, claimed.attempts) == (delivery_id, 1)
    assert claimed.next_attempt_at == T0 + timedelta(seconds=30)
    assert await db.outbox.claim_due(T0, 10, lease_s=30) == []
    assert await db.outbox.claim_due(T0 + timedelta(seconds=29), 10, lease_s=30) == []

    [again] = await db.outbox.claim_due(T0 + timedelta(seconds=30), 10, lease_s=30)
    assert (again.id, again.attempts) == (delivery_id, 2)


async def test_claim_takes_the_oldest_first_up_to_the_limit(db: Db) -> None:
    ids = [(await db.enqueue([hook("all")], at=T0 + timedelta(seconds=i)))[0] for i in range(5)]
    now = T0 + timedelta(minutes=1)
    first = await db.outbox.claim_due(now, 2, lease_s=60)
    second = await db.outbox.claim_due(now, 10, lease_s=60)
    assert [d.id for d in first] == ids[:2]
    assert [d.id for d in second] == ids[2:]


async def test_marks_finish_or_reschedule_a_delivery(db: Db) -> None:
    sent, failing, dead = await db.enqueue([hook("a"), hook("b"), hook("c")])
    await db.outbox.claim_due(T0, 10, lease_s=30)
    done_at = T0 + timedelta(seconds=1)
    retry_at = T0 + timedelta(seconds=5)
    await db.outbox.mark_delivered(sent, done_at)
    await db.outbox.mark_failed(failing, "HTTP 503: busy", retry_at)
    await db.outbox.mark_failed(dead, "HTTP 500: boom", None)

    delivered = await db.outbox.get(sent)
    assert delivered is not None
    assert (delivered.delivered_at, delivered.next_attempt_at) == (done_at, None)
    given_up = await db.outbox.get(dead)
    assert given_up is not None
    assert (given_up.delivered_at, given_up.next_attempt_at) == (None, None)
    assert (given_up.last_error, given_up.attempts) == ("HTTP 500: boom", 1)
    assert await db.outbox.get("whd_missing") is None

    assert await db.outbox.claim_due(retry_at - timedelta(seconds=1), 10, lease_s=30) == []
    [retried] = await db.outbox.claim_due(T0 + timedelta(days=1), 10, lease_s=30)
    assert (retried.id, retried.attempts, retried.last_error) == (failing, 2, "HTTP 503: busy")

    assert {d.id for d in await db.outbox.list(undelivered_only=True)} == {failing, dead}
    assert len(await db.outbox.list(limit=2)) == 2


async def test_concurrent_claimers_never_get_the_same_delivery(db: Db) -> None:
    for _ in range(8):
        await db.enqueue([hook("a"), hook("b"), hook("c")])  # 24 deliveries
    claimers = [db.outbox, db.replica(), db.replica()]

    async def drain(outbox: SqlWebhookOutbox) -> list[str]:
        taken: list[str] = []
        for _ in range(30):  # bounded: 24 deliveries, at least one per round while any is due
            batch = await outbox.claim_due(T0, 2, lease_s=300)
            if not batch:
                break
            taken += [delivery.id for delivery in batch]
        return taken

    results = await asyncio.gather(*(drain(outbox) for outbox in claimers for _ in range(2)))
    taken = [delivery_id for result in results for delivery_id in result]
    assert len(taken) == len(set(taken)) == 24
