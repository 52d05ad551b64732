"""Registry API: models, versions and their lifecycle, aliases, validation runs, comparisons.

Any key reads (secrets in instance specs are hidden); operators, admins and platform admins
write; approving (``to: deployed`` from ``pending_approval``) needs the ``approve_models``
permission and a key other than the submitter's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from starlette.requests import Request

from openautoglm.api.context import services_of
from openautoglm.api.routes.admin import Caller, ListOf
from openautoglm.api.routes.inference import ERRORS
from openautoglm.api.routes.registry_bodies import (
    AliasesUpdate,
    ComparisonOut,
    DeliveryOut,
    ModelCreate,
    ModelOut,
    ModelUpdate,
    TransitionCreate,
    TransitionOut,
    ValidationCreate,
    ValidationOut,
    VersionCreate,
    VersionOut,
    checked_gates,
    checked_thresholds,
    model_out,
    unix,
    validation_out,
    version_out,
)
from openautoglm.core.errors import InvalidRequestError, PermissionDeniedError
from openautoglm.registry.evaluation import parse_dataset, parse_items
from openautoglm.registry_wiring import Registry
from openautoglm.tenancy.model import Role

router = APIRouter(prefix="/v1/registry", tags=["registry"], responses=ERRORS)


def registry_of(request: Request) -> Registry:
    registry = services_of(request).registry
    assert registry is not None, "the registry is built with the services"
    return registry


Reg = Annotated[Registry, Depends(registry_of)]


@router.post("/models", status_code=status.HTTP_201_CREATED, response_model=ModelOut)
async def register_model(body: ModelCreate, actor: Caller, registry: Reg) -> ModelOut:
    model = await registry.service.register_model(
        actor,
        body.name,
        description=body.description,
        gates=checked_gates(body.gates),
        thresholds=checked_thresholds(body.thresholds),
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
        gates=checked_gates(body.gates) if body.gates is not None else None,
        thresholds=checked_thresholds(body.thresholds),
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
                delivered_at=unix(d.delivered_at),
                next_attempt_at=unix(d.next_attempt_at),
                last_error=d.last_error,
                created_at=int(d.created_at.timestamp()),
            )
            for d in deliveries
        ]
    )
