"""Registry API: models, versions and their lifecycle, aliases, validation runs, comparisons.

Any key reads (secrets in instance specs are hidden); operators, admins and platform admins
write; approving (``to: deployed`` from ``pending_approval``) needs the ``approve_models``
permission and a key other than the submitter's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from openautoglm.api.context import services_of
from openautoglm.api.routes.admin import Caller, ListOf
from openautoglm.api.routes.inference import ERRORS
from openautoglm.core.errors import InvalidRequestError, PermissionDeniedError
from openautoglm.registry.evaluation import parse_dataset, parse_items
from openautoglm.registry.lifecycle import VersionState, allowed_next
from openautoglm.registry.model import ModelVersion, RegisteredModel, ValidationRun
from openautoglm.registry.validation import parse_gates
from openautoglm.registry_wiring import Registry
from openautoglm.releases.analysis import Thresholds
from openautoglm.tenancy.model import Role

router = APIRouter(prefix="/v1/registry", tags=["registry"], responses=ERRORS)
SECRET_FIELDS = frozenset({"api_key"})


def registry_of(request: Request) -> Registry:
    registry = services_of(request).registry
    assert registry is not None, "the registry is built with the services"
    return registry


Reg = Annotated[Registry, Depends(registry_of)]
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


def _unix(moment: Any) -> int | None:
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
        finished_at=_unix(run.finished_at),
    )


def _gates(raw: Gates) -> dict[str, str]:
    """Gates checked and written one way (``">= 0.8"``)."""
    return {gate.metric: f"{gate.op} {gate.threshold:g}" for gate in parse_gates(raw)}


def _thresholds(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Release analysis defaults, checked now and stored as given (merged at release start)."""
    if raw is None:
        return None
    Thresholds.from_dict(raw)
    return dict(raw)


@router.post("/models", status_code=status.HTTP_201_CREATED, response_model=ModelOut)
async def register_model(body: ModelCreate, actor: Caller, registry: Reg) -> ModelOut:
    model = await registry.service.register_model(
        actor,
        body.name,
        description=body.description,
        gates=_gates(body.gates),
        thresholds=_thresholds(body.thresholds),
    )
    return model_out(model, {})


@router.get("/models", response_model=ListOf)
async def list_models(_actor: Caller, registry: Reg) -> ListOf:
    models = await registry.service.store.list_models()
    return ListOf(data=[model_out(m, await registry.service.aliases(m.name)) for m in models])


@router.get("/models/{name}", response_model=ModelOut)
async def get_model(name: str, _actor: Caller, registry: Reg) -> ModelOut:
    model = await registry.service.model(name)
    return model_out(model, await registry.service.aliases(name))


@router.patch("/models/{name}", response_model=ModelOut)
async def update_model(name: str, body: ModelUpdate, actor: Caller, registry: Reg) -> ModelOut:
    model = await registry.service.update_model(
        actor,
        name,
        description=body.description,
        gates=_gates(body.gates) if body.gates is not None else None,
        thresholds=_thresholds(body.thresholds),
    )
    return model_out(model, await registry.service.aliases(name))


@router.post(
    "/models/{name}/versions", status_code=status.HTTP_201_CREATED, response_model=VersionOut
)
async def add_version(name: str, body: VersionCreate, actor: Caller, registry: Reg) -> VersionOut:
    version = await registry.service.add_version(
        actor,
        name,
        body.version,
        body.instances,
        parameters=body.parameters,
        tags=body.tags,
        lineage=body.lineage,
        description=body.description,
    )
    return version_out(version)


@router.get("/models/{name}/versions", response_model=ListOf)
async def list_versions(name: str, _actor: Caller, registry: Reg) -> ListOf:
    await registry.service.model(name)
    versions = await registry.service.store.list_versions(name)
    return ListOf(data=[version_out(v) for v in versions])


@router.get("/models/{name}/versions/{version}", response_model=VersionOut)
async def get_version(name: str, version: str, _actor: Caller, registry: Reg) -> VersionOut:
    found = await registry.service.version(name, version)
    runs = [r for r in await registry.validations.list(name, version) if r.metrics]
    out = version_out(found, dict(runs[0].metrics or {}) if runs else None)
    out.history = [
        TransitionOut(
            from_state=t.from_state.value,
            to_state=t.to_state.value,
            actor=t.actor,
            reason=t.reason,
            at=int(t.at.timestamp()),
        )
        for t in await registry.service.history(name, version)
    ]
    return out


@router.post("/models/{name}/versions/{version}/transitions", response_model=VersionOut)
async def transition_version(
    name: str, version: str, body: TransitionCreate, actor: Caller, registry: Reg
) -> VersionOut:
    moved = await registry.service.transition(actor, name, version, body.to, body.reason)
    await registry.runtime.sync()
    return version_out(moved)


@router.get("/models/{name}/aliases", response_model=dict[str, str])
async def get_aliases(name: str, _actor: Caller, registry: Reg) -> dict[str, str]:
    await registry.service.model(name)
    return await registry.service.aliases(name)


@router.put("/models/{name}/aliases", response_model=dict[str, str])
async def set_aliases(
    name: str, body: AliasesUpdate, actor: Caller, registry: Reg
) -> dict[str, str]:
    moves: dict[str, str | None] = {
        alias: target
        for alias, target in (("champion", body.champion), ("challenger", body.challenger))
        if target is not None
    }
    moves.update({alias: None for alias in body.remove})
    if not moves:
        raise InvalidRequestError("name an alias to move or remove", param="champion")
    if any(r.model == name for r in await registry.releases.store.list(name, True)):
        raise InvalidRequestError(
            f"model '{name}' has an active release: promote, abort or roll it back instead",
            code="release_active",
        )
    aliases = await registry.service.set_aliases(actor, name, moves)
    await registry.runtime.sync()
    return aliases


@router.post(
    "/models/{name}/versions/{version}/validations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ValidationOut,
)
async def start_validation(
    name: str, version: str, body: ValidationCreate, actor: Caller, registry: Reg
) -> ValidationOut:
    if (body.dataset is None) == (body.dataset_jsonl is None):
        raise InvalidRequestError("give exactly one of dataset and dataset_jsonl", param="dataset")
    items = (
        parse_items(body.dataset)
        if body.dataset is not None
        else parse_dataset((body.dataset_jsonl or "").splitlines())
    )
    run = await registry.validations.start(
        actor,
        name,
        version,
        items,
        gates=body.gates,
        judge_model=body.judge_model,
        concurrency=body.concurrency,
    )
    return validation_out(run)


@router.get("/models/{name}/validations", response_model=ListOf)
async def list_validations(
    name: str,
    _actor: Caller,
    registry: Reg,
    version: Annotated[str | None, Query(max_length=100)] = None,
) -> ListOf:
    runs = await registry.validations.list(name, version)
    return ListOf(data=[validation_out(run) for run in runs])


@router.get("/validations/{run_id}", response_model=ValidationOut)
async def get_validation(
    run_id: str, _actor: Caller, registry: Reg, results: bool = False
) -> ValidationOut:
    return validation_out(await registry.validations.get(run_id), results)


@router.get("/models/{name}/compare", response_model=ComparisonOut)
async def compare_versions(
    name: str,
    _actor: Caller,
    registry: Reg,
    versions: Annotated[str, Query(description="comma-separated versions", max_length=2000)],
) -> ComparisonOut:
    names = [v.strip() for v in versions.split(",") if v.strip()]
    return ComparisonOut(**await registry.validations.compare(name, names))


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


@router.get("/webhooks/deliveries", response_model=ListOf)
async def list_deliveries(
    actor: Caller,
    registry: Reg,
    undelivered: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> ListOf:
    if actor.role is not Role.PLATFORM_ADMIN:
        raise PermissionDeniedError("only platform admins see webhook deliveries")
    deliveries = await registry.outbox.list(limit, undelivered)
    return ListOf(
        data=[
            DeliveryOut(
                id=d.id,
                webhook=d.webhook,
                event=d.event,
                attempts=d.attempts,
                delivered_at=_unix(d.delivered_at),
                next_attempt_at=_unix(d.next_attempt_at),
                last_error=d.last_error,
                created_at=int(d.created_at.timestamp()),
            )
            for d in deliveries
        ]
    )
