"""Context use cases for the API and the gateway: CRUD, open-on-first-use, storing turns, locking.

Invariants:

- Every call is scoped to one tenant; an absent, expired or other tenant's context raises
  ``NotFoundError`` with code ``context_not_found`` (the API answers 404, never 403).
- Calls on one context are serialised within this process by :meth:`ContextService.turn_lock`:
  the second caller waits until the first leaves, and waiters enter in arrival order (FIFO).
  Across replicas there is no lock; the store's atomic ``append_turns`` keeps each call's turns
  adjacent, and the exchanges of concurrent calls are ordered by commit.
- The lock table holds an entry only while someone holds or waits for that context's lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum

from openautoglm.contexts.model import (
    Context,
    Turn,
    expiry,
    validate_context_id,
    validate_labels,
    validate_limits,
)
from openautoglm.contexts.ports import ContextPage, ContextStore, TurnInput, context_not_found
from openautoglm.core.clock import Clock
from openautoglm.core.errors import ConflictError, InvalidRequestError
from openautoglm.core.ids import new_object_id


class _Default(Enum):
    TOKEN = "default"


DEFAULT = _Default.TOKEN
"""Pass for ``max_turns``/``ttl_s`` to take the value from ``ContextSettings``."""


@dataclass(frozen=True, slots=True)
class ContextSettings:
    """``None`` for ``default_ttl_s``/``default_max_turns`` means no expiry / no trimming."""

    create_on_first_use: bool = True
    default_ttl_s: int | None = 7 * 24 * 3600
    default_max_turns: int | None = 200
    max_context_id_len: int = 200

    def __post_init__(self) -> None:
        validate_limits(max_turns=self.default_max_turns, ttl_s=self.default_ttl_s, title=None)
        if not 1 <= self.max_context_id_len <= 200:
            raise ValueError("max_context_id_len must be between 1 and 200")


@dataclass(slots=True)
class _LockEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    num_users: int = 0  # holders plus waiters


class ContextService:
    """Contexts of tenants over a ``ContextStore``; time comes from the injected clock."""

    def __init__(
        self, store: ContextStore, clock: Clock, settings: ContextSettings | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings or ContextSettings()
        self._locks: dict[tuple[str, str], _LockEntry] = {}

    @property
    def settings(self) -> ContextSettings:
        return self._settings

    @property
    def num_locks(self) -> int:
        """Contexts whose lock is held or awaited right now."""
        return len(self._locks)

    def _checked_id(self, context_id: str) -> str:
        return validate_context_id(context_id, self._settings.max_context_id_len)

    async def create(
        self,
        tenant_id: str,
        context_id: str | None = None,
        *,
        title: str | None = None,
        labels: Mapping[str, str] | None = None,
        system_prompt: str | None = None,
        max_turns: int | _Default | None = DEFAULT,
        ttl_s: int | _Default | None = DEFAULT,
    ) -> Context:
        """Create a context (a random ``ctx_…`` id if none is given); ``ConflictError`` if taken."""
        context_id = new_object_id("ctx") if context_id is None else self._checked_id(context_id)
        defaults = self._settings
        turns_cap = defaults.default_max_turns if isinstance(max_turns, _Default) else max_turns
        lifetime_s = defaults.default_ttl_s if isinstance(ttl_s, _Default) else ttl_s
        validate_limits(max_turns=turns_cap, ttl_s=lifetime_s, title=title)
        now = self._clock.now()
        context = Context(
            id=context_id,
            tenant_id=tenant_id,
            created_at=now,
            updated_at=now,
            title=title,
            labels=validate_labels(labels or {}),
            system_prompt=system_prompt,
            max_turns=turns_cap,
            ttl_s=lifetime_s,
            expires_at=expiry(now, lifetime_s),
        )
        await self._store.create(context)
        return context

    async def get(self, tenant_id: str, context_id: str) -> Context:
        context = await self._store.get(
            tenant_id, self._checked_id(context_id), now=self._clock.now()
        )
        if context is None:
            raise context_not_found(context_id)
        return context

    async def delete(self, tenant_id: str, context_id: str) -> None:
        deleted = await self._store.delete(
            tenant_id, self._checked_id(context_id), now=self._clock.now()
        )
        if not deleted:
            raise context_not_found(context_id)

    async def turns(self, tenant_id: str, context_id: str) -> list[Turn]:
        """The context's history in seq order; ``NotFoundError`` if the context is absent."""
        await self.get(tenant_id, context_id)
        return await self._store.turns(tenant_id, context_id, now=self._clock.now())

    async def open_for_request(self, tenant_id: str, context_id: str) -> Context:
        """The context a request names, created with the defaults on first use if allowed.

        With ``create_on_first_use`` off, an absent context raises ``NotFoundError``
        (``context_not_found``). Two replicas creating the same context at once both get it.
        """
        context_id = self._checked_id(context_id)
        context = await self._store.get(tenant_id, context_id, now=self._clock.now())
        if context is not None:
            return context
        if not self._settings.create_on_first_use:
            raise context_not_found(context_id)
        try:
            return await self.create(tenant_id, context_id)
        except ConflictError:
            return await self.get(tenant_id, context_id)

    async def append_turns(
        self, tenant_id: str, context_id: str, turns: Sequence[TurnInput]
    ) -> list[Turn]:
        """Store one call's turns (typically the user turn and the answer) atomically."""
        return await self._store.append_turns(
            tenant_id, self._checked_id(context_id), turns, self._clock.now()
        )

    async def purge_expired(self) -> int:
        return await self._store.purge_expired(self._clock.now())

    @asynccontextmanager
    async def turn_lock(self, tenant_id: str, context_id: str) -> AsyncIterator[None]:
        """Hold the context's in-process lock: ``async with service.turn_lock(t, c): ...``."""
        key = (tenant_id, context_id)
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _LockEntry()
        entry.num_users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.num_users -= 1
            if entry.num_users == 0:
                del self._locks[key]

    # ``list`` comes last: a method of that name shadows the builtin in later annotations.
    async def list(
        self,
        tenant_id: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ContextPage:
        if labels:
            validate_labels(labels)
        if isinstance(limit, bool) or not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100", code="invalid_limit")
        return await self._store.list(
            tenant_id, now=self._clock.now(), limit=limit, cursor=cursor, labels=labels
        )
