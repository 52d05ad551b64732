"""Instances API: see every model's instances with their live state, and change them live.

Platform admins only (instances are shared infrastructure). A change applies at the next pick
on this replica, is kept in the store (replayed over the YAML on every start) and reaches the
other replicas within their reload interval (2 s).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from openautoglm.api.context import services_of, trace_of
from openautoglm.api.routes.admin import Caller, ListOf
from openautoglm.api.routes.inference import ERRORS
from openautoglm.backends.factory import build_backend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import PermissionDeniedError
from openautoglm.routing.catalog import Instance, ModelCatalog, ServedModel
from openautoglm.tenancy.model import Principal, Role

router = APIRouter(prefix="/v1/admin/models", tags=["instances"], responses=ERRORS)


def _catalog(request: Request, actor: Caller) -> ModelCatalog:
    _require_platform_admin(actor)
    return services_of(request).catalog


Catalog = Annotated[ModelCatalog, Depends(_catalog)]


def _require_platform_admin(actor: Principal) -> None:
    if actor.role is not Role.PLATFORM_ADMIN:
        raise PermissionDeniedError("only platform admins manage model instances")


class InstanceOut(BaseModel):
    object: Literal["model.instance"] = "model.instance"
    model: str
    name: str
    backend: str
    region: str | None
    weight: float
    labels: dict[str, str]
    max_concurrency: int
    in_flight: int
    breaker: str
    breaker_retry_in_s: float


class SchedulerOut(BaseModel):
    slots: int
    slots_in_use: int
    queue_depth: int
    estimated_wait_s: float
    service_s: float
    admitted: int
    rejected: dict[str, int]
    expired: int
    cancelled: int
    wait_p99_s: dict[str, float]


class ModelOut(BaseModel):
    object: Literal["model.deployment"] = "model.deployment"
    id: str
    balancer: str
    fallbacks: list[str]
    instances: list[InstanceOut]
    scheduler: SchedulerOut | None
    desired_replicas: int = Field(description="the scaling signal for an external autoscaler")


class InstanceChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float | None = Field(default=None, gt=0)
    region: str | None = None
    labels: dict[str, str] | None = None
    max_concurrency: int | None = Field(default=None, ge=1)


def _instance_out(instance: Instance) -> InstanceOut:
    config = instance.config
    return InstanceOut(
        model=instance.model,
        name=instance.name,
        backend=str(config.backend),
        region=config.region,
        weight=config.weight,
        labels=dict(config.labels),
        max_concurrency=config.max_concurrency,
        in_flight=instance.in_flight,
        breaker=instance.breaker.state.value,
        breaker_retry_in_s=round(instance.breaker.retry_in_s, 3),
    )


def _model_out(model: ServedModel) -> ModelOut:
    return ModelOut(
        id=model.name,
        balancer=_balancer_name(model),
        fallbacks=list(model.resilience.fallbacks),
        instances=[_instance_out(instance) for instance in model.instances],
        scheduler=_scheduler_out(model),
        desired_replicas=model.desired_replicas(),
    )


def _scheduler_out(model: ServedModel) -> SchedulerOut | None:
    if model.scheduler is None:
        return None
    stats = model.scheduler.stats()
    return SchedulerOut(
        slots=stats.capacity,
        slots_in_use=stats.in_flight,
        queue_depth=stats.depth,
        estimated_wait_s=round(stats.estimated_wait_s, 6),
        service_s=round(stats.service_s, 6),
        admitted=stats.admitted,
        rejected={str(reason): count for reason, count in stats.rejected.items()},
        expired=stats.expired,
        cancelled=stats.cancelled,
        wait_p99_s={str(p): round(w.p99_s, 6) for p, w in stats.waits.items() if w.count},
    )


def _balancer_name(model: ServedModel) -> str:
    names = {
        "SmoothWeightedRoundRobin": "round_robin",
        "LeastOutstanding": "least_outstanding",
        "PowerOfTwoEwma": "p2c_ewma",
        "ConsistentHash": "consistent_hash",
    }
    return names.get(type(model.balancer).__name__, type(model.balancer).__name__)


async def _record(request: Request, model: str, name: str, config: InstanceConfig | None) -> None:
    """Keep the change in the store: it survives restarts and reaches the other replicas."""
    sync = services_of(request).instance_sync
    if sync is not None:
        await sync.record(model, name, config)


@router.get("", response_model=ListOf, summary="Every model with its instances and their state")
async def list_deployments(catalog: Catalog) -> ListOf:
    return ListOf(data=[_model_out(model) for model in catalog])


@router.get("/{model_id}", response_model=ModelOut, summary="One model's instances")
async def get_deployment(model_id: str, catalog: Catalog) -> ModelOut:
    return _model_out(catalog.get(model_id))


@router.post(
    "/{model_id}/instances",
    status_code=status.HTTP_201_CREATED,
    response_model=InstanceOut,
    summary="Add an instance (started before it takes calls)",
)
async def add_instance(
    model_id: str, body: InstanceConfig, catalog: Catalog, request: Request
) -> InstanceOut:
    model = catalog.get(model_id)
    name = body.name or f"i{len(model.instances)}"
    config = body.model_copy(
        update={"backend": body.backend or model.instances[0].config.backend, "name": name}
    )
    instance = Instance(model.name, name, build_backend(config, model.name), config)
    await instance.backend.start()
    model.add(instance)
    await _record(request, model.name, name, config)
    trace_of(request).admin_action("instance.added", model=model.name, instance=name)
    return _instance_out(instance)


@router.patch(
    "/{model_id}/instances/{name}", response_model=InstanceOut, summary="Change an instance live"
)
async def change_instance(
    model_id: str, name: str, body: InstanceChange, catalog: Catalog, request: Request
) -> InstanceOut:
    instance = catalog.get(model_id).instance(name)
    changes = body.model_dump(exclude_unset=True)
    instance.config = instance.config.model_copy(update=changes)
    catalog.get(model_id).capacity_changed()
    await _record(request, model_id, name, instance.config)
    trace_of(request).admin_action(
        "instance.changed", model=model_id, instance=name, fields=sorted(changes)
    )
    return _instance_out(instance)


@router.delete(
    "/{model_id}/instances/{name}",
    response_model=InstanceOut,
    summary="Remove an instance (calls on it finish first; then it is closed)",
)
async def remove_instance(
    model_id: str, name: str, catalog: Catalog, request: Request
) -> InstanceOut:
    instance = catalog.get(model_id).remove(name)
    services_of(request).drain_and_close(instance)
    await _record(request, model_id, name, None)
    trace_of(request).admin_action("instance.removed", model=model_id, instance=name)
    return _instance_out(instance)
