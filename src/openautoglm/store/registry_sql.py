"""The model registry in the relational store.

A state change is one transaction: the version's row (only at the revision the caller read, so
two concurrent transitions cannot both win), its history row, alias moves and the webhook
deliveries of the events — a crash leaves all of them or none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from openautoglm.config.registry import WebhookConfig
from openautoglm.core.errors import ConflictError
from openautoglm.registry.lifecycle import Transition, VersionState
from openautoglm.registry.model import (
    Alias,
    InTransaction,
    ModelVersion,
    OutboxEvent,
    RegisteredModel,
    ValidationRun,
)
from openautoglm.store.database import shielded, write_transaction
from openautoglm.store.tables import (
    model_aliases,
    model_versions,
    registered_models,
    validation_runs,
    version_transitions,
)
from openautoglm.store.times import aware, to_utc
from openautoglm.store.webhooks_sql import OutboxWriter


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _model(row: Any) -> RegisteredModel:
    return RegisteredModel(
        name=row.name,
        created_at=aware(row.created_at),
        description=row.description,
        gates=_loads(row.gates),
        thresholds=_loads(row.thresholds),
        created_by=row.created_by,
    )


def _version(row: Any) -> ModelVersion:
    return ModelVersion(
        model=row.model,
        version=row.version,
        state=VersionState(row.state),
        instances=_loads(row.spec),
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        parameters=_loads(row.parameters),
        tags=_loads(row.tags),
        lineage=_loads(row.lineage),
        description=row.description,
        created_by=row.created_by,
        submitted_by=row.submitted_by,
        revision=row.revision,
    )


def _run(row: Any) -> ValidationRun:
    return ValidationRun(
        id=row.id,
        model=row.model,
        version=row.version,
        status=row.status,
        dataset_digest=row.dataset_digest,
        total=row.total,
        done=row.done,
        gates=_loads(row.gates),
        created_at=aware(row.created_at),
        metrics=_loads(row.metrics),
        gate_results=_loads(row.gate_results),
        results=_loads(row.results),
        error=row.error,
        created_by=row.created_by,
        finished_at=aware(row.finished_at),
    )


class SqlRegistryStore:
    """``RegistryStore`` on SQLAlchemy Core; events go to the webhook outbox."""

    def __init__(
        self,
        engine: AsyncEngine,
        webhooks: Sequence[WebhookConfig] = (),
        notify: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._outbox = OutboxWriter(webhooks, notify)

    # models

    @shielded
    async def add_model(self, model: RegisteredModel) -> None:
        try:
            async with write_transaction(self._engine) as connection:
                await connection.execute(
                    insert(registered_models).values(
                        name=model.name,
                        description=model.description,
                        gates=dumps(dict(model.gates)),
                        thresholds=dumps(dict(model.thresholds)),
                        created_at=to_utc(model.created_at),
                        created_by=model.created_by,
                    )
                )
        except IntegrityError as exc:
            raise ConflictError(
                f"model '{model.name}' is already registered", code="model_exists"
            ) from exc

    @shielded
    async def update_model(self, model: RegisteredModel) -> None:
        async with write_transaction(self._engine) as connection:
            await connection.execute(
                update(registered_models)
                .where(registered_models.c.name == model.name)
                .values(
                    description=model.description,
                    gates=dumps(dict(model.gates)),
                    thresholds=dumps(dict(model.thresholds)),
                )
            )

    async def get_model(self, name: str) -> RegisteredModel | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(registered_models).where(registered_models.c.name == name)
                )
            ).first()
        return None if row is None else _model(row)

    async def list_models(self) -> list[RegisteredModel]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(registered_models).order_by(registered_models.c.name)
            )
            return [_model(row) for row in rows]

    # versions

    @shielded
    async def add_version(self, version: ModelVersion) -> None:
        try:
            async with write_transaction(self._engine) as connection:
                await connection.execute(
                    insert(model_versions).values(
                        model=version.model,
                        version=version.version,
                        state=version.state.value,
                        spec=dumps(list(version.instances)),
                        parameters=dumps(dict(version.parameters)),
                        tags=dumps(dict(version.tags)),
                        lineage=dumps(dict(version.lineage)),
                        description=version.description,
                        created_by=version.created_by,
                        submitted_by=version.submitted_by,
                        created_at=to_utc(version.created_at),
                        updated_at=to_utc(version.updated_at),
                        revision=version.revision,
                    )
                )
        except IntegrityError as exc:
            raise ConflictError(
                f"model '{version.model}' already has a version '{version.version}'",
                code="version_exists",
            ) from exc

    async def get_version(self, model: str, version: str) -> ModelVersion | None:
        query = select(model_versions).where(
            model_versions.c.model == model, model_versions.c.version == version
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _version(row)

    async def list_versions(self, model: str) -> list[ModelVersion]:
        query = (
            select(model_versions)
            .where(model_versions.c.model == model)
            .order_by(model_versions.c.created_at, model_versions.c.version)
        )
        async with self._engine.connect() as connection:
            return [_version(row) for row in await connection.execute(query)]

    @shielded
    async def apply_transition(
        self,
        version: ModelVersion,
        moved: Transition,
        events: Sequence[OutboxEvent],
        aliases: Mapping[str, str | None] | None = None,
        also: InTransaction | None = None,
    ) -> ModelVersion:
        submitted_by = version.submitted_by
        if moved.to_state is VersionState.PENDING_APPROVAL:
            submitted_by = moved.actor
        async with write_transaction(self._engine) as connection:
            changed = await connection.execute(
                update(model_versions)
                .where(
                    model_versions.c.model == version.model,
                    model_versions.c.version == version.version,
                    model_versions.c.revision == version.revision,
                )
                .values(
                    state=moved.to_state.value,
                    submitted_by=submitted_by,
                    updated_at=to_utc(moved.at),
                    revision=version.revision + 1,
                )
            )
            if changed.rowcount != 1:
                raise ConflictError(
                    f"{version.model} version {version.version} changed meanwhile; read it again",
                    code="concurrent_change",
                )
            await connection.execute(
                insert(version_transitions).values(
                    model=moved.model,
                    version=moved.version,
                    from_state=moved.from_state.value,
                    to_state=moved.to_state.value,
                    actor=moved.actor,
                    reason=moved.reason,
                    at=to_utc(moved.at),
                )
            )
            if aliases:
                await _move_aliases(connection, version.model, aliases, moved.actor, moved.at)
            await self._outbox.write(connection, events, moved.at)
            if also is not None:
                await also(connection)
        self._outbox.committed(events)
        return replace(
            version,
            state=moved.to_state,
            submitted_by=submitted_by,
            updated_at=moved.at,
            revision=version.revision + 1,
        )

    async def transitions(self, model: str, version: str) -> list[Transition]:
        query = (
            select(version_transitions)
            .where(version_transitions.c.model == model, version_transitions.c.version == version)
            .order_by(version_transitions.c.id)
        )
        async with self._engine.connect() as connection:
            rows = await connection.execute(query)
            return [
                Transition(
                    row.model,
                    row.version,
                    VersionState(row.from_state),
                    VersionState(row.to_state),
                    row.actor,
                    aware(row.at),
                    row.reason,
                )
                for row in rows
            ]

    # aliases

    async def aliases(self, model: str) -> list[Alias]:
        query = (
            select(model_aliases)
            .where(model_aliases.c.model == model)
            .order_by(model_aliases.c.alias)
        )
        async with self._engine.connect() as connection:
            rows = await connection.execute(query)
            return [
                Alias(row.model, row.alias, row.version, aware(row.updated_at), row.updated_by)
                for row in rows
            ]

    @shielded
    async def set_aliases(
        self,
        model: str,
        moves: Mapping[str, str | None],
        actor: str,
        at: datetime,
        events: Sequence[OutboxEvent],
    ) -> None:
        async with write_transaction(self._engine) as connection:
            await _move_aliases(connection, model, moves, actor, at)
            await self._outbox.write(connection, events, at)
        self._outbox.committed(events)

    # validation runs

    @shielded
    async def add_validation(self, run: ValidationRun) -> None:
        async with write_transaction(self._engine) as connection:
            await connection.execute(insert(validation_runs).values(**_run_values(run)))

    @shielded
    async def update_validation(self, run: ValidationRun, events: Sequence[OutboxEvent]) -> None:
        values = _run_values(run)
        del values["id"]
        async with write_transaction(self._engine) as connection:
            await connection.execute(
                update(validation_runs).where(validation_runs.c.id == run.id).values(**values)
            )
            await self._outbox.write(connection, events, run.finished_at or run.created_at)
        self._outbox.committed(events)

    async def get_validation(self, run_id: str) -> ValidationRun | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(validation_runs).where(validation_runs.c.id == run_id)
                )
            ).first()
        return None if row is None else _run(row)

    async def list_validations(self, model: str, version: str | None) -> list[ValidationRun]:
        query = select(validation_runs).where(validation_runs.c.model == model)
        if version is not None:
            query = query.where(validation_runs.c.version == version)
        query = query.order_by(validation_runs.c.created_at.desc(), validation_runs.c.id)
        async with self._engine.connect() as connection:
            return [_run(row) for row in await connection.execute(query)]


async def _move_aliases(
    connection: AsyncConnection,
    model: str,
    moves: Mapping[str, str | None],
    actor: str,
    at: datetime,
) -> None:
    for alias, target in moves.items():
        await connection.execute(
            delete(model_aliases).where(
                model_aliases.c.model == model, model_aliases.c.alias == alias
            )
        )
        if target is not None:
            await connection.execute(
                insert(model_aliases).values(
                    model=model,
                    alias=alias,
                    version=target,
                    updated_at=to_utc(at),
                    updated_by=actor,
                )
            )


def _run_values(run: ValidationRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "model": run.model,
        "version": run.version,
        "status": run.status,
        "dataset_digest": run.dataset_digest,
        "total": run.total,
        "done": run.done,
        "metrics": None if run.metrics is None else dumps(dict(run.metrics)),
        "gates": dumps(list(run.gates)),
        "gate_results": None if run.gate_results is None else dumps(list(run.gate_results)),
        "results": None if run.results is None else dumps(list(run.results)),
        "error": run.error,
        "created_by": run.created_by,
        "created_at": to_utc(run.created_at),
        "finished_at": None if run.finished_at is None else to_utc(run.finished_at),
    }
