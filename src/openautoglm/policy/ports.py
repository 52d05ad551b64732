"""What the policy engine needs from a store: versioned documents and key suspensions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

GLOBAL_SCOPE = "global"


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One applied version of a scope's policy; ``document`` is None when it was withdrawn."""

    scope: str
    version: int
    document: str | None
    digest: str | None
    created_at: datetime
    created_by: str | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Suspension:
    """A key refused until ``until`` after repeated policy violations."""

    key_id: str
    tenant_id: str
    until: datetime
    reason: str
    created_at: datetime


class PolicyStore(Protocol):
    async def add_version(
        self,
        scope: str,
        document: str | None,
        digest: str | None,
        created_at: datetime,
        created_by: str | None,
        comment: str | None,
    ) -> PolicyVersion:
        """Store the next version of ``scope`` (atomically numbered) and return it."""
        ...

    async def heads(self) -> dict[str, int]:
        """The current version number of every scope that has one."""
        ...

    async def current(self, scopes: list[str]) -> list[PolicyVersion]:
        """The current version of each named scope that has one."""
        ...

    async def versions(self, scope: str) -> list[PolicyVersion]:
        """Every version of ``scope``, newest first."""
        ...

    async def version(self, scope: str, version: int) -> PolicyVersion | None: ...

    async def suspend(self, suspension: Suspension) -> None:
        """Suspend a key (replacing an earlier suspension of it)."""
        ...

    async def lift(self, key_id: str) -> bool:
        """Lift a key's suspension; False if it had none."""
        ...

    async def suspensions(self, now: datetime) -> list[Suspension]:
        """The suspensions still in force at ``now``."""
        ...


class InMemoryPolicyStore:
    """A :class:`PolicyStore` in a dict, for tests and single-process tools."""

    def __init__(self) -> None:
        self._versions: dict[str, list[PolicyVersion]] = {}
        self._suspensions: dict[str, Suspension] = {}
        self._lock = asyncio.Lock()

    async def add_version(
        self,
        scope: str,
        document: str | None,
        digest: str | None,
        created_at: datetime,
        created_by: str | None,
        comment: str | None,
    ) -> PolicyVersion:
        async with self._lock:
            history = self._versions.setdefault(scope, [])
            version = PolicyVersion(
                scope, len(history) + 1, document, digest, created_at, created_by, comment
            )
            history.append(version)
            return version

    async def heads(self) -> dict[str, int]:
        return {scope: history[-1].version for scope, history in self._versions.items()}

    async def current(self, scopes: list[str]) -> list[PolicyVersion]:
        return [self._versions[s][-1] for s in scopes if self._versions.get(s)]

    async def versions(self, scope: str) -> list[PolicyVersion]:
        return list(reversed(self._versions.get(scope, [])))

    async def version(self, scope: str, version: int) -> PolicyVersion | None:
        history = self._versions.get(scope, [])
        return history[version - 1] if 0 < version <= len(history) else None

    async def suspend(self, suspension: Suspension) -> None:
        self._suspensions[suspension.key_id] = replace(suspension)

    async def lift(self, key_id: str) -> bool:
        return self._suspensions.pop(key_id, None) is not None

    async def suspensions(self, now: datetime) -> list[Suspension]:
        return [s for s in self._suspensions.values() if s.until > now]
