"""The policy service: versions in the store, compiled in memory, reloaded on every replica.

Every replica polls the store's version heads every ``reload_interval_s`` (one small query) and
recompiles only the scopes that changed, so an apply on one replica is in force everywhere within
that interval, without a restart. A document is compiled before it is stored: one that does not
compile is refused whole and the previous version stays in force. A compiled version is never
replaced by a failing one, even if the store holds it (written by an older engine, say).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import timedelta
from pathlib import Path

from openautoglm.core.clock import Clock
from openautoglm.core.errors import InvalidRequestError, NotFoundError
from openautoglm.policy.document import PolicyError, parse_policy, parse_policy_with_lines
from openautoglm.policy.engine import (
    CompiledDocument,
    EffectivePolicy,
    KeySuspended,
    compile_document,
)
from openautoglm.policy.lockout import InMemoryViolationCounter, ViolationCounter
from openautoglm.policy.ports import GLOBAL_SCOPE, PolicyStore, PolicyVersion, Suspension

logger = logging.getLogger(__name__)
_EMPTY = EffectivePolicy((), {})


class InvalidPolicy(InvalidRequestError):
    """A document refused at apply time (400 ``invalid_policy``), naming its line."""

    code = "invalid_policy"

    def __init__(self, error: PolicyError) -> None:
        super().__init__(f"policy refused: {error}", param="document")
        self.line = error.line


def validate(text: str, libraries_dir: Path | None = None) -> CompiledDocument:
    """Parse and compile ``text``; raise :class:`InvalidPolicy` if it cannot be used."""
    try:
        document, lines = parse_policy_with_lines(text)
        return compile_document(document, libraries_dir, lines)
    except PolicyError as exc:
        raise InvalidPolicy(exc) from exc
    except ValueError as exc:  # a detector refused its configuration
        raise InvalidPolicy(PolicyError(str(exc))) from exc


class PolicyService:
    """Applies, serves and reloads policies; counts violations and suspends keys."""

    def __init__(
        self,
        store: PolicyStore,
        clock: Clock,
        libraries_dir: Path | None = None,
        counter: ViolationCounter | None = None,
        reload_interval_s: float = 2.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self.libraries_dir = libraries_dir
        self._counter = counter or InMemoryViolationCounter(clock)
        self.reload_interval_s = reload_interval_s
        self._compiled: dict[str, tuple[int, CompiledDocument | None]] = {}
        self._effective: dict[str, EffectivePolicy] = {}
        self._suspended: dict[str, Suspension] = {}
        self._refresh_lock = asyncio.Lock()

    # -- the request path (synchronous, cached) ------------------------------------------------

    def for_tenant(self, tenant_id: str) -> EffectivePolicy:
        """The rules in force for ``tenant_id``."""
        effective = self._effective.get(tenant_id)
        if effective is None:
            effective = self._effective[tenant_id] = self._join(tenant_id)
        return effective

    def suspension_of(self, key_id: str) -> Suspension | None:
        suspension = self._suspended.get(key_id)
        if suspension is None or suspension.until <= self._clock.now():
            return None
        return suspension

    def refuse_if_suspended(self, key_id: str) -> None:
        """Raise :class:`KeySuspended` (403, Retry-After) for a suspended key."""
        suspension = self.suspension_of(key_id)
        if suspension is None:
            return
        error = KeySuspended(
            f"this API key is suspended until {suspension.until.isoformat()} "
            "after repeated policy violations"
        )
        error.retry_after_s = max(1.0, (suspension.until - self._clock.now()).total_seconds())
        raise error

    async def record_violation(
        self, tenant_id: str, key_id: str, rule_id: str
    ) -> Suspension | None:
        """Count a blocked request; suspend the key when the tenant's lockout says so."""
        lockout = self.for_tenant(tenant_id).lockout
        if lockout is None:
            return None
        count = await self._counter.add(key_id, lockout.window_s)
        if count < lockout.violations:
            return None
        now = self._clock.now()
        suspension = Suspension(
            key_id=key_id,
            tenant_id=tenant_id,
            until=now + timedelta(seconds=lockout.suspend_s),
            reason=(
                f"{count} policy violations within {lockout.window_s}s (last rule '{rule_id}')"
            ),
            created_at=now,
        )
        await self._store.suspend(suspension)
        await self._counter.reset(key_id)
        self._suspended[key_id] = suspension
        logger.warning("suspended key %s until %s: %s", key_id, suspension.until, suspension.reason)
        return suspension

    # -- administration ------------------------------------------------------------------------

    async def apply(
        self, scope: str, text: str, created_by: str | None, comment: str | None = None
    ) -> PolicyVersion:
        """Validate ``text`` and store it as the next version of ``scope``."""
        compiled = validate(text, self.libraries_dir)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        version = await self._store.add_version(
            scope, text, digest, self._clock.now(), created_by, comment
        )
        self._install(scope, version.version, compiled)
        return version

    async def withdraw(self, scope: str, created_by: str | None) -> PolicyVersion:
        """End ``scope``'s policy (a new version without a document)."""
        current = await self._store.current([scope])
        if not current or current[0].document is None:
            raise NotFoundError(f"no policy in force for '{scope}'", code="policy_not_found")
        version = await self._store.add_version(
            scope, None, None, self._clock.now(), created_by, "withdrawn"
        )
        self._install(scope, version.version, None)
        return version

    async def current(self, scope: str) -> PolicyVersion | None:
        found = await self._store.current([scope])
        return found[0] if found and found[0].document is not None else None

    async def versions(self, scope: str) -> list[PolicyVersion]:
        return await self._store.versions(scope)

    async def version(self, scope: str, number: int) -> PolicyVersion | None:
        return await self._store.version(scope, number)

    async def heads(self) -> dict[str, int]:
        return await self._store.heads()

    async def suspensions(self) -> list[Suspension]:
        return await self._store.suspensions(self._clock.now())

    async def lift(self, key_id: str) -> bool:
        self._suspended.pop(key_id, None)
        await self._counter.reset(key_id)
        return await self._store.lift(key_id)

    # -- reloading -----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Load the scopes whose version changed, and the suspensions in force."""
        async with self._refresh_lock:
            heads = await self._store.heads()
            changed = [
                scope
                for scope, version in heads.items()
                if self._compiled.get(scope, (0, None))[0] != version
            ]
            for version in await self._store.current(changed):
                self._load(version)
            self._suspended = {
                s.key_id: s for s in await self._store.suspensions(self._clock.now())
            }

    async def run_reloader(self) -> None:
        """Refresh every ``reload_interval_s`` until cancelled; store errors are logged."""
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                await self.refresh()
            except Exception as exc:
                logger.warning("reloading policies failed (previous ones stay in force): %s", exc)

    def _load(self, version: PolicyVersion) -> None:
        if version.document is None:
            self._install(version.scope, version.version, None)
            return
        try:
            compiled = compile_document(parse_policy(version.document), self.libraries_dir)
        except (PolicyError, ValueError) as exc:
            logger.error(
                "policy %s version %d does not compile here (%s); the previous one stays",
                version.scope,
                version.version,
                exc,
            )
            previous = self._compiled.get(version.scope, (0, None))[1]
            self._compiled[version.scope] = (version.version, previous)
            return
        self._install(version.scope, version.version, compiled)

    def _install(self, scope: str, version: int, compiled: CompiledDocument | None) -> None:
        known = self._compiled.get(scope)
        if known is not None and known[0] > version:
            return  # a newer version was installed meanwhile
        self._compiled[scope] = (version, compiled)
        if scope == GLOBAL_SCOPE:
            self._effective.clear()
        else:
            self._effective.pop(scope, None)

    def _join(self, tenant_id: str) -> EffectivePolicy:
        documents: list[CompiledDocument] = []
        versions: dict[str, int] = {}
        for scope in (GLOBAL_SCOPE, tenant_id):
            version, compiled = self._compiled.get(scope, (0, None))
            if compiled is not None:
                documents.append(compiled)
                versions[scope] = version
        return EffectivePolicy(documents, versions) if documents else _EMPTY
