"""Bodies and answers of the registry API, and the conversions between them and the records."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openautoglm.registry.lifecycle import VersionState, allowed_next
from openautoglm.registry.model import ModelVersion, RegisteredModel, ValidationRun
from openautoglm.registry.validation import parse_gates
from openautoglm.releases.thresholds import Thresholds

SECRET_FIELDS = frozenset({"api_key"})
Gates = dict[str, str | float]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCreate(_Body):
    name: str = Field(min_length=1, max_length=200, description="the model name clients call")
    description: str | None = Field(default=None, max_length=4000)
    gates: Gates = Field(
        default_factory=dict,
        description='validation gates, e.g. {"accuracy": ">= 0.8", "p99_latency_s": "<= 1"}',
    )
    thresholds: dict[str, Any] = Field(
        default_factory=dict, description="release analysis defaults (see Thresholds)"
    )


class ModelUpdate(_Body):
    description: str | None = Field(default=None, max_length=4000)
    gates: Gates | None = None
    thresholds: dict[str, Any] | None = None


class ModelOut(BaseModel):
    object: Literal["registry.model"] = "registry.model"
    name: str
    description: str | None
    gates: dict[str, Any]
    thresholds: dict[str, Any]
    aliases: dict[str, str]
    created_at: int
    created_by: str | None


class VersionCreate(_Body):
    version: str = Field(min_length=1, max_length=100)
    instances: list[dict[str, Any]] = Field(
        min_length=1, description="what serves it: instance settings as in the YAML"
    )
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(
        default_factory=dict, description="pipeline_run, commit, source, parent version, …"
    )
    description: str | None = Field(default=None, max_length=4000)


class TransitionOut(BaseModel):
    from_state: str
    to_state: str
    actor: str
    reason: str | None
    at: int


class VersionOut(BaseModel):
    object: Literal["registry.version"] = "registry.version"
    model: str
    version: str
    state: VersionState
    allowed_next: list[str]
    instances: list[dict[str, Any]]
    parameters: dict[str, Any]
    tags: dict[str, str]
    lineage: dict[str, Any]
    description: str | None
    created_by: str | None
    submitted_by: str | None
    created_at: int
    updated_at: int
    evaluation: dict[str, Any] | None = Field(
        default=None, description="metrics of the newest finished validation run"
    )
    history: list[TransitionOut] | None = None


class TransitionCreate(_Body):
    to: VersionState
    reason: str | None = Field(default=None, max_length=4000)


class AliasesUpdate(_Body):
    champion: str | None = None
    challenger: str | None = None
    remove: list[Literal["challenger"]] = Field(default_factory=list)


class ValidationCreate(_Body):
    dataset: list[dict[str, Any]] | None = Field(
        default=None, description="evaluation items (or dataset_jsonl)"
    )
    dataset_jsonl: str | None = Field(default=None, description="evaluation items as JSON Lines")
    gates: Gates | None = Field(default=None, description="default: the model's gates")
    judge_model: str | None = Field(default=None, description="model grading judge items")
    concurrency: int = Field(default=4, ge=1, le=64)


class ValidationOut(BaseModel):
    object: Literal["registry.validation"] = "registry.validation"
    id: str
    model: str
    version: str
    status: Literal["running", "passed", "failed", "error"]
    dataset_digest: str
    total: int
    done: int
    metrics: dict[str, float] | None
    gates: list[dict[str, Any]]
    gate_results: list[dict[str, Any]] | None
    results: list[dict[str, Any]] | None = None
    error: str | None
    created_by: str | None
    created_at: int
    finished_at: int | None


class ComparisonOut(BaseModel):
    object: Literal["registry.comparison"] = "registry.comparison"
    model: str
    versions: list[str]
    runs: list[str]
    datasets: list[str]
    same_dataset: bool
    rows: list[dict[str, Any]]


def unix(moment: Any) -> int | None:
    return None if moment is None else int(moment.timestamp())


def model_out(model: RegisteredModel, aliases: dict[str, str]) -> ModelOut:
    return ModelOut(
        name=model.name,
        description=model.description,
        gates=dict(model.gates),
        thresholds=dict(model.thresholds),
        aliases=aliases,
        created_at=int(model.created_at.timestamp()),
        created_by=model.created_by,
    )


def version_out(version: ModelVersion, evaluation: dict[str, Any] | None = None) -> VersionOut:
    return VersionOut(
        model=version.model,
        version=version.version,
        state=version.state,
        allowed_next=allowed_next(version.state),
        instances=[
            {k: ("***" if k in SECRET_FIELDS and v else v) for k, v in spec.items()}
            for spec in version.instances
        ],
        parameters=dict(version.parameters),
        tags=dict(version.tags),
        lineage=dict(version.lineage),
        description=version.description,
        created_by=version.created_by,
        submitted_by=version.submitted_by,
        created_at=int(version.created_at.timestamp()),
        updated_at=int(version.updated_at.timestamp()),
        evaluation=evaluation,
    )


def validation_out(run: ValidationRun, with_results: bool = False) -> ValidationOut:
    return ValidationOut(
        id=run.id,
        model=run.model,
        version=run.version,
        status=run.status,
        dataset_digest=run.dataset_digest,
        total=run.total,
        done=run.done,
        metrics=dict(run.metrics) if run.metrics is not None else None,
        gates=[dict(gate) for gate in run.gates],
        gate_results=[dict(g) for g in run.gate_results] if run.gate_results else None,
        results=[dict(r) for r in run.results] if with_results and run.results else None,
        error=run.error,
        created_by=run.created_by,
        created_at=int(run.created_at.timestamp()),
        finished_at=unix(run.finished_at),
    )


def checked_gates(raw: Gates) -> dict[str, str]:
    """Gates checked and written one way (``">= 0.8"``)."""
    return {gate.metric: f"{gate.op} {gate.threshold:g}" for gate in parse_gates(raw)}


def checked_thresholds(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Release analysis defaults, checked now and stored as given (merged at release start)."""
    if raw is None:
        return None
    Thresholds.from_dict(raw)
    return dict(raw)


class DeliveryOut(BaseModel):
    object: Literal["webhook.delivery"] = "webhook.delivery"
    id: str
    webhook: str
    event: str
    attempts: int
    delivered_at: int | None
    next_attempt_at: int | None
    last_error: str | None
    created_at: int
