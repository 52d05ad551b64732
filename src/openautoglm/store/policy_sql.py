"""SQL adapter of ``policy.ports.PolicyStore`` (SQLite and PostgreSQL).

Versions are numbered ``max + 1`` inside the inserting transaction; two replicas applying the
same scope at once collide on the primary key ``(scope, version)`` and the loser retries, so
numbers stay gapless and no apply is lost.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from openautoglm.core.errors import ConflictError
from openautoglm.policy.ports import PolicyVersion, Suspension
from openautoglm.store.database import shielded, write_transaction
from openautoglm.store.tables import key_suspensions, policy_versions
from openautoglm.store.times import aware, to_utc

_APPLY_ATTEMPTS = 5


def _version(row: Any) -> PolicyVersion:
    return PolicyVersion(
        scope=row.scope,
        version=row.version,
        document=row.document,
        digest=row.digest,
        created_at=aware(row.created_at),
        created_by=row.created_by,
        comment=row.comment,
    )


def _suspension(row: Any) -> Suspension:
    return Suspension(
        key_id=row.key_id,
        tenant_id=row.tenant_id,
        until=aware(row.suspended_until),
        reason=row.reason,
        created_at=aware(row.created_at),
    )


class SqlPolicyStore:
    """Policy versions and key suspensions in the engine's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @shielded
    async def add_version(
        self,
        scope: str,
        document: str | None,
        digest: str | None,
        created_at: datetime,
        created_by: str | None,
        comment: str | None,
    ) -> PolicyVersion:
        for _ in range(_APPLY_ATTEMPTS):
            try:
                async with write_transaction(self._engine) as connection:
                    latest = await connection.scalar(
                        select(func.max(policy_versions.c.version)).where(
                            policy_versions.c.scope == scope
                        )
                    )
                    version = PolicyVersion(
                        scope,
                        (latest or 0) + 1,
                        document,
                        digest,
                        to_utc(created_at),
                        created_by,
                        comment,
                    )
                    await connection.execute(
                        insert(policy_versions).values(
                            scope=scope,
                            version=version.version,
                            document=document,
                            digest=digest,
                            created_at=version.created_at,
                            created_by=created_by,
                            comment=comment,
                        )
                    )
                return version
            except IntegrityError:
                continue  # another replica took this number first
        raise ConflictError(f"policy '{scope}' is being changed concurrently; try again")

    async def heads(self) -> dict[str, int]:
        query = select(policy_versions.c.scope, func.max(policy_versions.c.version)).group_by(
            policy_versions.c.scope
        )
        async with self._engine.connect() as connection:
            return {scope: version for scope, version in (await connection.execute(query))}

    async def current(self, scopes: list[str]) -> list[PolicyVersion]:
        if not scopes:
            return []
        latest = (
            select(policy_versions.c.scope, func.max(policy_versions.c.version).label("version"))
            .where(policy_versions.c.scope.in_(scopes))
            .group_by(policy_versions.c.scope)
            .subquery()
        )
        query = select(policy_versions).join(
            latest,
            (policy_versions.c.scope == latest.c.scope)
            & (policy_versions.c.version == latest.c.version),
        )
        async with self._engine.connect() as connection:
            return [_version(row) for row in await connection.execute(query)]

    async def versions(self, scope: str) -> list[PolicyVersion]:
        query = (
            select(policy_versions)
            .where(policy_versions.c.scope == scope)
            .order_by(policy_versions.c.version.desc())
        )
        async with self._engine.connect() as connection:
            return [_version(row) for row in await connection.execute(query)]

    async def version(self, scope: str, version: int) -> PolicyVersion | None:
        query = select(policy_versions).where(
            policy_versions.c.scope == scope, policy_versions.c.version == version
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return _version(row) if row is not None else None

    @shielded
    async def suspend(self, suspension: Suspension) -> None:
        async with write_transaction(self._engine) as connection:
            await connection.execute(
                delete(key_suspensions).where(key_suspensions.c.key_id == suspension.key_id)
            )
            await connection.execute(
                insert(key_suspensions).values(
                    key_id=suspension.key_id,
                    tenant_id=suspension.tenant_id,
                    suspended_until=to_utc(suspension.until),
                    reason=suspension.reason,
                    created_at=to_utc(suspension.created_at),
                )
            )

    @shielded
    async def lift(self, key_id: str) -> bool:
        async with write_transaction(self._engine) as connection:
            result = await connection.execute(
                delete(key_suspensions).where(key_suspensions.c.key_id == key_id)
            )
        return bool(result.rowcount)

    async def suspensions(self, now: datetime) -> list[Suspension]:
        query = select(key_suspensions).where(key_suspensions.c.suspended_until > to_utc(now))
        async with self._engine.connect() as connection:
            return [_suspension(row) for row in await connection.execute(query)]
