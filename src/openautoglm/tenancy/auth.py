"""Turning a presented API key into a :class:`Principal`, in microseconds.

The store is asked once per key; answers (also "unknown key") are cached for ``cache_ttl_s`` so a
request costs one SHA-256 and a dict lookup. Expiry is checked on every call against the clock.
Invariant: a key unknown to the store never authenticates; a revoked key stops authenticating on
this replica within ``cache_ttl_s`` (``invalidate`` makes it immediate).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from openautoglm.core.clock import Clock
from openautoglm.core.errors import AuthenticationError
from openautoglm.tenancy.keys import KEY_PREFIX, hash_secret
from openautoglm.tenancy.model import ApiKey, Principal
from openautoglm.tenancy.ports import TenancyStore

_MAX_KEY_CHARS = 256


@dataclass(slots=True)
class _Entry:
    key: ApiKey | None
    fetched_at: float


class Authenticator:
    """Authenticates API keys against the store through a small TTL cache."""

    def __init__(
        self,
        store: TenancyStore,
        clock: Clock,
        *,
        cache_ttl_s: float = 5.0,
        max_entries: int = 100_000,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl_s = cache_ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, _Entry] = {}
        self._in_flight: dict[str, asyncio.Future[ApiKey | None]] = {}

    async def authenticate(self, secret: str | None) -> Principal:
        """The principal for ``secret``; raises ``AuthenticationError`` otherwise."""
        if not secret:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>' or an 'api-key' header",
                code="missing_api_key",
            )
        if len(secret) > _MAX_KEY_CHARS or not secret.startswith(KEY_PREFIX):
            raise AuthenticationError("invalid API key")
        key = await self._lookup(hash_secret(secret))
        if key is None:
            raise AuthenticationError("invalid API key")
        if not key.is_active(self._clock.now()):
            raise AuthenticationError("API key is revoked or expired", code="inactive_api_key")
        return Principal(
            tenant_id=key.tenant_id,
            key_id=key.id,
            role=key.role,
            allowed_models=key.allowed_models,
            expires_at=key.expires_at,
        )

    def invalidate(self, key_hash: str | None = None) -> None:
        """Forget one cached key, or all of them."""
        if key_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(key_hash, None)

    async def _lookup(self, key_hash: str) -> ApiKey | None:
        now = self._clock.monotonic()
        entry = self._cache.get(key_hash)
        if entry is not None and now - entry.fetched_at < self._ttl_s:
            return entry.key
        # One store query per key at a time: when a hot key's entry expires, the requests in
        # flight for it wait for that query instead of each running their own.
        pending = self._in_flight.get(key_hash)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request was cancelled, not the shared lookup
                return await self._lookup(key_hash)
        future: asyncio.Future[ApiKey | None] = asyncio.get_running_loop().create_future()
        self._in_flight[key_hash] = future
        try:
            key = await self._store.key_by_hash(key_hash)
        except asyncio.CancelledError:
            future.cancel()  # waiters start their own lookup
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: the waiters, if any, re-raise it themselves
            raise
        finally:
            del self._in_flight[key_hash]
        future.set_result(key)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[key_hash] = _Entry(key=key, fetched_at=now)
        return key
