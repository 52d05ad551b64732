"""The registry's operations: register models and versions, move versions through their
lifecycle, point aliases at versions.

Who may do what: any key may read; platform admins, tenant admins and operators may write;
approving a version for deployment needs the ``approve_models`` permission and a different key
than the one that submitted it (four eyes). Every state change and alias move is one store
transaction with its webhook deliveries, and one audit event (kind ``admin``).

The first version of a model to be approved becomes its ``champion`` (the stable version that
serves its traffic); later ones reach traffic through a release (``releases/``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from openautoglm.audit.log import AuditLog
from openautoglm.audit.model import AuditRecord
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.clock import Clock
from openautoglm.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from openautoglm.core.ids import new_object_id
from openautoglm.registry.lifecycle import Actor, Transition, VersionState, transition
from openautoglm.registry.model import (
    ALIASES,
    Alias,
    InTransaction,
    ModelVersion,
    OutboxEvent,
    RegisteredModel,
    RegistryStore,
)
from openautoglm.tenancy.model import Permission, Principal, Role

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_WRITERS = (Role.PLATFORM_ADMIN, Role.ADMIN, Role.OPERATOR)
SERVING_STATES = (VersionState.DEPLOYED, VersionState.MONITORING)


def actor_of(principal: Principal) -> Actor:
    """The lifecycle's view of a caller: its key, and whether it may approve."""
    return Actor(principal.key_id, principal.holds(Permission.APPROVE_MODELS))


def require_writer(principal: Principal) -> None:
    """Refuse keys whose role may not change the registry or releases."""
    if principal.role not in _WRITERS:
        raise PermissionDeniedError(
            f"role '{principal.role.value}' may not change the model registry; "
            "it needs operator, admin or platform_admin",
            code="role_forbidden",
        )


def checked_instances(model: str, instances: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The serving spec, validated as instance settings; names default to ``i0``, ``i1``…"""
    if not instances:
        raise InvalidRequestError(
            f"a version of '{model}' needs at least one instance", param="instances"
        )
    checked: list[dict[str, Any]] = []
    for index, raw in enumerate(instances):
        try:
            config = InstanceConfig(**{"name": f"i{index}", **raw})
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise InvalidRequestError(
                f"instances[{index}].{where}: {problem['msg']}", param="instances"
            ) from exc
        if config.backend is None:
            raise InvalidRequestError(f"instances[{index}] needs a backend", param="instances")
        if config.backend == "openai" and not config.base_url:
            raise InvalidRequestError(
                f"instances[{index}]: backend 'openai' needs base_url", param="instances"
            )
        checked.append(config.model_dump(exclude_defaults=True) | {"backend": config.backend})
    names = [spec["name"] for spec in checked]
    if len(set(names)) != len(names):
        raise InvalidRequestError("instance names must be unique", param="instances")
    return checked


class RegistryService:
    """Registry operations with their permission checks, events and audit records."""

    def __init__(self, store: RegistryStore, clock: Clock, audit: AuditLog | None = None) -> None:
        self.store = store
        self._clock = clock
        self._audit = audit
        # Says why a version may not be moved by hand now (it is in an active release); the
        # release controller installs it and moves such versions itself.
        self.release_guard: Callable[[str, str], Awaitable[str | None]] | None = None

    # models

    async def register_model(
        self,
        principal: Principal,
        name: str,
        *,
        description: str | None = None,
        gates: Mapping[str, str] | None = None,
        thresholds: Mapping[str, Any] | None = None,
    ) -> RegisteredModel:
        require_writer(principal)
        if not _NAME.match(name):
            raise InvalidRequestError(
                "a registry model name is 1-200 letters, digits and . _ : -", param="name"
            )
        model = RegisteredModel(
            name=name,
            created_at=self._clock.now(),
            description=description,
            gates=dict(gates or {}),
            thresholds=dict(thresholds or {}),
            created_by=principal.key_id,
        )
        await self.store.add_model(model)
        self.record(principal.key_id, "model.registered", name, None, {})
        return model

    async def model(self, name: str) -> RegisteredModel:
        found = await self.store.get_model(name)
        if found is None:
            raise NotFoundError(f"model '{name}' is not registered", code="model_not_registered")
        return found

    async def update_model(
        self,
        principal: Principal,
        name: str,
        *,
        description: str | None = None,
        gates: Mapping[str, str] | None = None,
        thresholds: Mapping[str, Any] | None = None,
    ) -> RegisteredModel:
        require_writer(principal)
        model = await self.model(name)
        changed = RegisteredModel(
            name=model.name,
            created_at=model.created_at,
            description=description if description is not None else model.description,
            gates=dict(gates) if gates is not None else model.gates,
            thresholds=dict(thresholds) if thresholds is not None else model.thresholds,
            created_by=model.created_by,
        )
        await self.store.update_model(changed)
        self.record(principal.key_id, "model.updated", name, None, {})
        return changed

    # versions

    async def add_version(
        self,
        principal: Principal,
        model: str,
        version: str,
        instances: Sequence[Mapping[str, Any]],
        *,
        parameters: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        lineage: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> ModelVersion:
        require_writer(principal)
        await self.model(model)
        if not _VERSION.match(version):
            raise InvalidRequestError(
                "a version is 1-100 letters, digits and . _ + -", param="version"
            )
        now = self._clock.now()
        created = ModelVersion(
            model=model,
            version=version,
            state=VersionState.DEVELOPMENT,
            instances=checked_instances(model, instances),
            created_at=now,
            updated_at=now,
            parameters=dict(parameters or {}),
            tags=dict(tags or {}),
            lineage={**(lineage or {}), "registered_by": principal.key_id},
            description=description,
            created_by=principal.key_id,
        )
        await self.store.add_version(created)
        self.record(principal.key_id, "version.registered", model, version, {})
        return created

    async def version(self, model: str, version: str) -> ModelVersion:
        found = await self.store.get_version(model, version)
        if found is None:
            raise NotFoundError(
                f"model '{model}' has no version '{version}'", code="version_not_found"
            )
        return found

    async def move(
        self,
        actor: Actor,
        model: str,
        version: str,
        target: VersionState,
        reason: str | None = None,
        extra_aliases: Mapping[str, str | None] | None = None,
        also: InTransaction | None = None,
    ) -> ModelVersion:
        """Move a version to ``target`` (the lifecycle decides whether it may); ``also`` writes
        more in the same transaction."""
        current = await self.version(model, version)
        moved = transition(
            model=model,
            version=version,
            current=current.state,
            target=target,
            actor=actor,
            submitted_by=current.submitted_by,
            at=self._clock.now(),
            reason=reason,
        )
        aliases = {alias.alias: alias.version for alias in await self.store.aliases(model)}
        moves: dict[str, str | None] = dict(extra_aliases or {})
        if target not in SERVING_STATES and {**aliases, **moves}.get("champion") == version:
            raise ConflictError(
                f"{model} version {version} is the champion (it serves the traffic): "
                "promote or roll back to another version first",
                code="version_is_champion",
            )
        if target is VersionState.DEPLOYED and "champion" not in {**aliases, **moves}:
            moves["champion"] = version  # the first approved version serves the model
        events = [OutboxEvent("version.transitioned", transition_event(moved))]
        events += [
            OutboxEvent("alias.moved", {"model": model, "alias": name, "version": to})
            for name, to in moves.items()
        ]
        updated = await self.store.apply_transition(current, moved, events, moves, also)
        self.record(actor.user_id, "version.transitioned", model, version, transition_event(moved))
        for name, to in moves.items():
            self.record(actor.user_id, "alias.moved", model, to, {"alias": name})
        return updated

    async def transition(
        self,
        principal: Principal,
        model: str,
        version: str,
        target: VersionState,
        reason: str | None = None,
    ) -> ModelVersion:
        """A caller's request to move a version (approve, reject, deprecate, …)."""
        require_writer(principal)
        if self.release_guard is not None:
            busy = await self.release_guard(model, version)
            if busy is not None:
                raise ConflictError(busy, code="version_in_release")
        return await self.move(actor_of(principal), model, version, target, reason)

    async def history(self, model: str, version: str) -> list[Transition]:
        await self.version(model, version)
        return await self.store.transitions(model, version)

    # aliases

    async def aliases(self, model: str) -> dict[str, str]:
        return {alias.alias: alias.version for alias in await self.store.aliases(model)}

    async def alias_records(self, model: str) -> list[Alias]:
        return await self.store.aliases(model)

    async def set_aliases(
        self, principal: Principal, model: str, moves: Mapping[str, str | None]
    ) -> dict[str, str]:
        """Point aliases at versions (None removes one), all in one transaction."""
        require_writer(principal)
        await self.model(model)
        for alias, target in moves.items():
            if alias not in ALIASES:
                raise InvalidRequestError(
                    f"unknown alias '{alias}'; aliases are {', '.join(ALIASES)}", param="alias"
                )
            if target is None:
                if alias == "champion":
                    raise ConflictError(
                        "the champion alias can be moved but not removed", code="champion_required"
                    )
                continue
            version = await self.version(model, target)
            if alias == "champion" and version.state not in SERVING_STATES:
                raise ConflictError(
                    f"the champion must be deployed or monitoring; {model} version {target} "
                    f"is {version.state.value}",
                    code="version_not_deployed",
                )
        now = self._clock.now()
        events = [
            OutboxEvent("alias.moved", {"model": model, "alias": name, "version": to})
            for name, to in moves.items()
        ]
        await self.store.set_aliases(model, moves, principal.key_id, now, events)
        for name, to in moves.items():
            self.record(principal.key_id, "alias.moved", model, to, {"alias": name})
        return await self.aliases(model)

    def record(
        self,
        actor: str,
        action: str,
        model: str,
        version: str | None,
        detail: Mapping[str, Any],
    ) -> None:
        """Append an audit event (kind ``admin``) for a registry or release action."""
        if self._audit is None:
            return
        self._audit.record(
            AuditRecord(
                request_id=new_object_id("reg"),
                occurred_at=self._clock.now(),
                kind="admin",
                endpoint="registry",
                status=200,
                key_id=actor,
                action=action,
                model=model,
                version=version,
                detail=dict(detail) or None,
            )
        )


def transition_event(moved: Transition) -> dict[str, Any]:
    """The webhook and audit payload of a transition."""
    return {
        "model": moved.model,
        "version": moved.version,
        "from": moved.from_state.value,
        "to": moved.to_state.value,
        "actor": moved.actor,
        "reason": moved.reason,
        "at": _iso(moved.at),
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
