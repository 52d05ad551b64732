"""Registry records: registered models, their versions, aliases, and the ports that store them.

A version's ``instances`` are the serving spec: instance settings (the same keys as a model's
``instances`` in the YAML) that start when the version serves traffic. ``lineage`` says where
the version came from (who registered it, pipeline run, commit, source); ``evaluation`` is the
newest validation run's metrics, filled in when read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from openautoglm.registry.lifecycle import Transition, VersionState

ALIASES = ("champion", "challenger")
"""``champion``: the stable version that serves a model's traffic; ``challenger``: the candidate
of the running release."""


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A model name in the registry, with the defaults its versions are judged by."""

    name: str
    created_at: datetime
    description: str | None = None
    gates: Mapping[str, str] = field(default_factory=dict)
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One version of a registered model."""

    model: str
    version: str
    state: VersionState
    instances: Sequence[Mapping[str, Any]]
    created_at: datetime
    updated_at: datetime
    parameters: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    lineage: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None
    created_by: str | None = None
    submitted_by: str | None = None
    revision: int = 1


@dataclass(frozen=True, slots=True)
class Alias:
    model: str
    alias: str
    version: str
    updated_at: datetime
    updated_by: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A webhook event written in the same transaction as the change it reports."""

    event: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ValidationRun:
    """One run of an evaluation set against a version, and what it measured."""

    id: str
    model: str
    version: str
    status: str  # running | passed | failed | error
    dataset_digest: str
    total: int
    done: int
    gates: Sequence[Mapping[str, Any]]
    created_at: datetime
    metrics: Mapping[str, float] | None = None
    gate_results: Sequence[Mapping[str, Any]] | None = None
    results: Sequence[Mapping[str, Any]] | None = None
    error: str | None = None
    created_by: str | None = None
    finished_at: datetime | None = None


InTransaction = Callable[[Any], Awaitable[None]]
"""More writes for the same transaction (a release's row with its candidate's move); it gets
the store's connection."""


class RegistryStore(Protocol):
    """Where the registry keeps its records (``store/registry_sql.py``)."""

    async def add_model(self, model: RegisteredModel) -> None: ...

    async def get_model(self, name: str) -> RegisteredModel | None: ...

    async def list_models(self) -> list[RegisteredModel]: ...

    async def update_model(self, model: RegisteredModel) -> None: ...

    async def add_version(self, version: ModelVersion) -> None: ...

    async def get_version(self, model: str, version: str) -> ModelVersion | None: ...

    async def list_versions(self, model: str) -> list[ModelVersion]: ...

    async def apply_transition(
        self,
        version: ModelVersion,
        moved: Transition,
        events: Sequence[OutboxEvent],
        aliases: Mapping[str, str | None] | None = None,
        also: InTransaction | None = None,
    ) -> ModelVersion:
        """Move ``version`` (at its revision) to ``moved.to_state``, record the transition,
        set or drop ``aliases`` (name → version, None drops), write ``events`` and run
        ``also`` — all in one transaction. A concurrent change of the same version raises
        ``ConflictError``."""
        ...

    async def transitions(self, model: str, version: str) -> list[Transition]: ...

    async def aliases(self, model: str) -> list[Alias]: ...

    async def set_aliases(
        self,
        model: str,
        moves: Mapping[str, str | None],
        actor: str,
        at: datetime,
        events: Sequence[OutboxEvent],
    ) -> None:
        """Point each alias at a version (None drops it), all together or none."""
        ...

    async def add_validation(self, run: ValidationRun) -> None: ...

    async def update_validation(
        self, run: ValidationRun, events: Sequence[OutboxEvent]
    ) -> None: ...

    async def get_validation(self, run_id: str) -> ValidationRun | None: ...

    async def list_validations(self, model: str, version: str | None) -> list[ValidationRun]: ...
