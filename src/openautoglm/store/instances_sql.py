"""Instance overrides in the store: what the admin API changed, replayed on every replica.

``revision`` grows by one with every change (max + 1 in the writing transaction, which holds the
database's write lock on SQLite and an advisory lock on PostgreSQL), so a replica reloads only
when the highest revision moved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from openautoglm.store.database import shielded, write_transaction
from openautoglm.store.tables import instance_overrides

_LOCK = 0x494E5354  # "INST"


@dataclass(frozen=True, slots=True)
class InstanceOverride:
    model: str
    name: str
    config: dict[str, Any] | None  # None: removed
    revision: int


class SqlInstanceStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @shielded
    async def put(self, model: str, name: str, config: dict[str, Any] | None) -> int:
        """Record an instance's new configuration (None: removed); its revision."""
        async with write_transaction(self._engine) as connection:
            if connection.dialect.name == "postgresql":  # number changes one at a time
                await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK})
            latest = await connection.scalar(select(func.max(instance_overrides.c.revision)))
            revision = (latest or 0) + 1
            await connection.execute(
                delete(instance_overrides).where(
                    instance_overrides.c.model == model, instance_overrides.c.name == name
                )
            )
            await connection.execute(
                insert(instance_overrides).values(
                    model=model,
                    name=name,
                    config=None if config is None else json.dumps(config, sort_keys=True),
                    revision=revision,
                    updated_at=datetime.now(UTC),
                )
            )
        return revision

    async def revision(self) -> int:
        async with self._engine.connect() as connection:
            latest = await connection.scalar(select(func.max(instance_overrides.c.revision)))
        return int(latest or 0)

    async def all(self) -> list[InstanceOverride]:
        query = select(instance_overrides).order_by(instance_overrides.c.revision)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            InstanceOverride(
                row.model,
                row.name,
                None if row.config is None else json.loads(row.config),
                row.revision,
            )
            for row in rows
        ]
