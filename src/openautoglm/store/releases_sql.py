"""Releases in the relational store.

A model has at most one active (running or paused) release: ``add`` checks that inside its
write transaction (serialised on SQLite; under an advisory lock per model on PostgreSQL). Every
change is written only over the revision it was read at, with its webhook deliveries.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openautoglm.config.registry import WebhookConfig
from openautoglm.core.errors import ConflictError
from openautoglm.registry.model import OutboxEvent
from openautoglm.releases.model import Release, ReleaseState
from openautoglm.store.database import shielded, write_transaction
from openautoglm.store.registry_sql import dumps
from openautoglm.store.tables import releases
from openautoglm.store.times import aware, to_utc
from openautoglm.store.webhooks_sql import OutboxWriter

_ACTIVE = (ReleaseState.RUNNING.value, ReleaseState.PAUSED.value)


def _release(row: Any) -> Release:
    return Release(
        id=row.id,
        model=row.model,
        state=ReleaseState(row.state),
        stable_version=row.stable_version,
        candidate_version=row.candidate_version,
        steps=tuple(orjson.loads(row.steps)),
        interval_s=row.interval_s,
        step_index=row.step_index,
        shadow=bool(row.shadow),
        thresholds=orjson.loads(row.thresholds),
        started_at=aware(row.started_at),
        step_started_at=aware(row.step_started_at),
        started_by=row.started_by,
        finished_at=aware(row.finished_at),
        reason=row.reason,
        revision=row.revision,
    )


def _values(release: Release) -> dict[str, Any]:
    return {
        "model": release.model,
        "state": release.state.value,
        "stable_version": release.stable_version,
        "candidate_version": release.candidate_version,
        "steps": dumps(list(release.steps)),
        "interval_s": release.interval_s,
        "step_index": release.step_index,
        "shadow": int(release.shadow),
        "thresholds": dumps(dict(release.thresholds)),
        "started_by": release.started_by,
        "started_at": to_utc(release.started_at),
        "step_started_at": to_utc(release.step_started_at),
        "finished_at": None if release.finished_at is None else to_utc(release.finished_at),
        "reason": release.reason,
        "revision": release.revision,
    }


class SqlReleaseStore:
    """``ReleaseStore`` on SQLAlchemy Core; events go to the webhook outbox."""

    def __init__(
        self,
        engine: AsyncEngine,
        webhooks: Sequence[WebhookConfig] = (),
        notify: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._outbox = OutboxWriter(webhooks, notify)

    @shielded
    async def add(self, release: Release, events: Sequence[OutboxEvent]) -> None:
        async with write_transaction(self._engine) as connection:
            await self.add_in(connection, release, events)
        self._outbox.committed(events)

    @shielded
    async def update(self, release: Release, events: Sequence[OutboxEvent]) -> Release:
        async with write_transaction(self._engine) as connection:
            await self.update_in(connection, release, events)
        self._outbox.committed(events)
        return release

    async def add_in(
        self, connection: AsyncConnection, release: Release, events: Sequence[OutboxEvent]
    ) -> None:
        """``add`` inside the caller's transaction (with the candidate's lifecycle move)."""
        if connection.dialect.name == "postgresql":
            lock = zlib.crc32(f"release:{release.model}".encode())
            await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock})
        active = await connection.scalar(
            select(releases.c.id).where(
                releases.c.model == release.model, releases.c.state.in_(_ACTIVE)
            )
        )
        if active is not None:
            raise ConflictError(
                f"model '{release.model}' already has an active release ({active})",
                code="release_active",
            )
        await connection.execute(insert(releases).values(id=release.id, **_values(release)))
        await self._outbox.write(connection, events, release.started_at)

    async def update_in(
        self, connection: AsyncConnection, release: Release, events: Sequence[OutboxEvent]
    ) -> None:
        """``update`` inside the caller's transaction (with the candidate's lifecycle move)."""
        changed = await connection.execute(
            update(releases)
            .where(releases.c.id == release.id, releases.c.revision == release.revision - 1)
            .values(**_values(release))
        )
        if changed.rowcount != 1:
            raise ConflictError(
                f"release {release.id} changed meanwhile; read it again",
                code="concurrent_change",
            )
        await self._outbox.write(connection, events, release.finished_at or release.step_started_at)

    async def get(self, release_id: str) -> Release | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(select(releases).where(releases.c.id == release_id))
            ).first()
        return None if row is None else _release(row)

    async def list(self, model: str | None = None, active_only: bool = False) -> list[Release]:
        query = select(releases)
        if model is not None:
            query = query.where(releases.c.model == model)
        if active_only:
            query = query.where(releases.c.state.in_(_ACTIVE))
        query = query.order_by(releases.c.started_at.desc(), releases.c.id)
        async with self._engine.connect() as connection:
            return [_release(row) for row in await connection.execute(query)]

    async def latest(self, model: str) -> Release | None:
        found = await self.list(model)
        return found[0] if found else None
