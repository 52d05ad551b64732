"""Turning a presented API key into a :class:`Principal`, in microseconds.

A request costs one SHA-256 and a dict lookup. Answers from the store (also "unknown key") are
cached: younger than ``refresh_after_s`` they are used as they are; older, they are still used
while one background query refreshes them; older than ``max_age_s`` the request waits for the
store. Only one store query per key runs at a time (single flight). Expiry is checked on every
call against the clock.

Invariants: a key unknown to the store never authenticates; a revoked key stops authenticating
on this replica at once when ``invalidate`` is called (the admin path and the Redis key events
call it), and otherwise within ``refresh_after_s`` plus one store round trip.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass

from openautoglm.core.clock import Clock
from openautoglm.core.errors import AuthenticationError, PermissionDeniedError
from openautoglm.tenancy.keys import KEY_PREFIX, hash_secret
from openautoglm.tenancy.model import ApiKey, Principal, Tenant
from openautoglm.tenancy.ports import TenancyStore

logger = logging.getLogger(__name__)
_MAX_KEY_CHARS = 256


@dataclass(frozen=True, slots=True)
class _Entry:
    key: ApiKey | None
    tenant: Tenant | None
    fetched_at: float
    principal: Principal | None = None


class Authenticator:
    """Authenticates API keys against the store through a small cache."""

    def __init__(
        self,
        store: TenancyStore,
        clock: Clock,
        *,
        refresh_after_s: float = 1.0,
        max_age_s: float = 30.0,
        max_entries: int = 100_000,
    ) -> None:
        self._store = store
        self._clock = clock
        self._refresh_after_s = refresh_after_s
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        self._cache: dict[str, _Entry] = {}
        self._in_flight: dict[str, asyncio.Future[_Entry]] = {}
        self._refreshing: dict[str, asyncio.Task[_Entry]] = {}

    async def authenticate(self, secret: str | None) -> Principal:
        """The principal for ``secret``; raises ``AuthenticationError`` otherwise."""
        if not secret:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>' or an 'api-key' header",
                code="missing_api_key",
            )
        if len(secret) > _MAX_KEY_CHARS or not secret.startswith(KEY_PREFIX):
            raise AuthenticationError("invalid API key")
        key_hash = hash_secret(secret)
        entry = await self._entry(key_hash)
        key, tenant = entry.key, entry.tenant
        # The store matched on the hash; comparing again in constant time guards against a
        # lookup that matched loosely (collation, trailing spaces) and leaks no timing.
        if key is None or tenant is None or not hmac.compare_digest(key.key_hash, key_hash):
            raise AuthenticationError("invalid API key")
        if not key.is_active(self._clock.now()):
            raise AuthenticationError("API key is revoked or expired", code="inactive_api_key")
        if tenant.is_disabled:
            raise PermissionDeniedError(
                f"tenant '{tenant.name}' is disabled", code="tenant_disabled"
            )
        assert entry.principal is not None  # built with every entry that has a key and tenant
        return entry.principal

    def invalidate(self, key_hash: str | None = None) -> None:
        """Forget one cached key, or all of them."""
        if key_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(key_hash, None)

    def invalidate_tenant(self, tenant_id: str) -> None:
        """Forget every cached key of a tenant (its limits or state changed)."""
        stale = [h for h, e in self._cache.items() if e.key and e.key.tenant_id == tenant_id]
        for key_hash in stale:
            del self._cache[key_hash]

    async def _entry(self, key_hash: str) -> _Entry:
        entry = self._cache.get(key_hash)
        if entry is not None:
            age_s = self._clock.monotonic() - entry.fetched_at
            if age_s < self._refresh_after_s:
                return entry
            if age_s < self._max_age_s:
                self._refresh_in_background(key_hash)
                return entry
        return await self._fetch(key_hash)

    def _refresh_in_background(self, key_hash: str) -> None:
        if key_hash in self._refreshing or key_hash in self._in_flight:
            return
        task = asyncio.ensure_future(self._fetch(key_hash))
        self._refreshing[key_hash] = task

        def done(finished: asyncio.Task[_Entry]) -> None:
            del self._refreshing[key_hash]
            if not finished.cancelled() and finished.exception() is not None:
                logger.warning("refreshing a cached API key failed: %s", finished.exception())

        task.add_done_callback(done)

    async def _fetch(self, key_hash: str) -> _Entry:
        # One store query per key at a time: concurrent requests wait for the same answer.
        pending = self._in_flight.get(key_hash)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request was cancelled, not the shared lookup
                return await self._fetch(key_hash)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._in_flight[key_hash] = future
        try:
            entry = await self._query(key_hash)
        except asyncio.CancelledError:
            future.cancel()  # waiters start their own lookup
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: the waiters, if any, re-raise it themselves
            raise
        finally:
            del self._in_flight[key_hash]
        future.set_result(entry)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[key_hash] = entry
        return entry

    async def _query(self, key_hash: str) -> _Entry:
        fetched_at = self._clock.monotonic()
        key = await self._store.key_by_hash(key_hash)
        tenant = await self._store.tenant_by_id(key.tenant_id) if key is not None else None
        principal = None
        if key is not None and tenant is not None:
            principal = Principal(
                tenant_id=key.tenant_id,
                key_id=key.id,
                role=key.role,
                allowed_models=key.allowed_models,
                expires_at=key.expires_at,
                allowed_regions=key.allowed_regions,
                key_prefix=key.prefix,
                key_limits=key.limits,
                tenant_limits=tenant.limits,
                permissions=key.permissions,
            )
        return _Entry(key=key, tenant=tenant, fetched_at=fetched_at, principal=principal)
