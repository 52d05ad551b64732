"""Workflows API: definitions, runs and their tasks, graphs, approvals, webhook triggers.

Definitions are shared; operators, admins and platform admins write them. Any key that may call
models starts runs (they run under the workflows' tenant settings, and belong to the caller's
tenant); a tenant sees its own runs, platform admins all. A webhook trigger is authenticated by
its secret (an HMAC signature of the body), not by an API key.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from openautoglm.api.context import services_of
from openautoglm.api.routes.admin import Caller, ListOf
from openautoglm.api.routes.inference import ERRORS
from openautoglm.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from openautoglm.registry.service import require_writer
from openautoglm.registry.webhooks import verify_signature
from openautoglm.tenancy.model import Principal, Role
from openautoglm.workflows.definition import load_workflow
from openautoglm.workflows.graph import render_svg, to_dot, to_mermaid
from openautoglm.workflows.model import Run, RunState, TaskRun
from openautoglm.workflows_wiring import Workflows

router = APIRouter(tags=["workflows"], responses=ERRORS)


def workflows_of(request: Request) -> Workflows:
    workflows = services_of(request).workflows
    if workflows is None:
        raise NotFoundError("workflows are disabled on this server", code="workflows_disabled")
    return workflows


Flows = Annotated[Workflows, Depends(workflows_of)]


class DefinitionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document: dict[str, Any] | None = Field(default=None, description="the definition as JSON")
    yaml: str | None = Field(default=None, description="the definition as YAML text")


class DefinitionOut(BaseModel):
    object: Literal["workflow"] = "workflow"
    name: str
    version: int
    document: dict[str, Any]
    mermaid: str


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=0, le=9, description="0 highest, default 5")
    deadline_s: float | None = Field(default=None, gt=0, description="finish within, from now")
    dedupe_key: str | None = Field(
        default=None, max_length=300, description="start at most one run per key"
    )


class TaskOut(BaseModel):
    task_id: str
    state: str
    attempts: int
    idempotency_key: str
    output: Any = None
    error: str | None = None
    error_class: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    next_attempt_at: float | None = None
    duration_s: float | None = None
    logs: list[str] = Field(default_factory=list)


class RunOut(BaseModel):
    object: Literal["workflow.run"] = "workflow.run"
    id: str
    workflow: str
    workflow_version: int
    state: RunState
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    priority: int
    deadline: float | None
    trigger: str
    created_by: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    tasks: list[TaskOut] | None = None


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approved: bool = True
    comment: str | None = Field(default=None, max_length=4000)


def _ts(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def task_out(task: TaskRun) -> TaskOut:
    duration = None
    if task.started_at is not None and task.finished_at is not None:
        duration = (task.finished_at - task.started_at).total_seconds()
    return TaskOut(
        task_id=task.task_id,
        state=task.state.value,
        attempts=task.attempts,
        idempotency_key=task.idempotency_key,
        output=task.output,
        error=task.error,
        error_class=task.error_class,
        started_at=_ts(task.started_at),
        finished_at=_ts(task.finished_at),
        next_attempt_at=_ts(task.next_attempt_at),
        duration_s=duration,
        logs=list(task.logs),
    )


def run_out(run: Run, tasks: list[TaskRun] | None = None) -> RunOut:
    return RunOut(
        id=run.id,
        workflow=run.workflow,
        workflow_version=run.workflow_version,
        state=run.state,
        inputs=dict(run.inputs),
        outputs=dict(run.outputs) if run.outputs is not None else None,
        error=run.error,
        priority=run.priority,
        deadline=_ts(run.deadline),
        trigger=run.trigger,
        created_by=run.created_by,
        created_at=run.created_at.timestamp(),
        started_at=_ts(run.started_at),
        finished_at=_ts(run.finished_at),
        tasks=None if tasks is None else [task_out(t) for t in sorted(tasks, key=_order)],
    )


def _order(task: TaskRun) -> tuple[float, str]:
    return (task.started_at.timestamp() if task.started_at else float("inf"), task.task_id)


async def _visible_run(flows: Workflows, actor: Principal, run_id: str) -> Run:
    run = await flows.service.run(run_id)
    if run.tenant_id is not None and not actor.acts_in(run.tenant_id):
        raise NotFoundError(f"run '{run_id}' not found", code="run_not_found")
    return run


@router.post("/v1/workflows", status_code=status.HTTP_201_CREATED, response_model=DefinitionOut)
async def apply_workflow(body: DefinitionIn, actor: Caller, flows: Flows) -> DefinitionOut:
    require_writer(actor)
    if (body.document is None) == (body.yaml is None):
        raise InvalidRequestError("give exactly one of document and yaml", param="document")
    document = body.document if body.document is not None else _yaml(body.yaml or "")
    version, spec = await flows.service.apply(document, actor.key_id)
    return DefinitionOut(
        name=spec.name, version=version, document=spec.as_document(), mermaid=to_mermaid(spec)
    )


def _yaml(text: str) -> dict[str, Any]:
    return load_workflow(text).as_document()


@router.get("/v1/workflows", response_model=ListOf)
async def list_workflows(_actor: Caller, flows: Flows) -> ListOf:
    rows = await flows.service.store.definitions()
    return ListOf(
        data=[{"name": n, "version": v, "updated_at": at.timestamp()} for n, v, at in rows]
    )


@router.get("/v1/workflows/{name}", response_model=DefinitionOut)
async def get_workflow(
    name: str, _actor: Caller, flows: Flows, version: Annotated[int | None, Query(ge=1)] = None
) -> DefinitionOut:
    found, spec = await flows.service.spec(name, version)
    return DefinitionOut(
        name=name, version=found, document=spec.as_document(), mermaid=to_mermaid(spec)
    )


@router.get("/v1/workflows/{name}/graph", response_class=Response)
async def workflow_graph(
    name: str,
    actor: Caller,
    flows: Flows,
    run_id: str | None = None,
    format: Literal["mermaid", "dot", "svg"] = "mermaid",
) -> Response:
    """The DAG, with each task's state when ``run_id`` is given."""
    states: dict[str, str] | None = None
    version = None
    if run_id is not None:
        run = await _visible_run(flows, actor, run_id)
        if run.workflow != name:
            raise NotFoundError(f"run '{run_id}' is not a run of '{name}'", code="run_not_found")
        version = run.workflow_version
        states = {t.task_id: t.state.value for t in await flows.service.tasks(run_id)}
    _, spec = await flows.service.spec(name, version)
    if format == "mermaid":
        return Response(to_mermaid(spec, states), media_type="text/plain; charset=utf-8")
    dot = to_dot(spec, states)
    if format == "dot":
        return Response(dot, media_type="text/vnd.graphviz; charset=utf-8")
    svg = render_svg(dot)
    if svg is None:
        raise InvalidRequestError(
            "SVG needs Graphviz (the dot program) on the server; ask for format=dot or mermaid",
            param="format",
        )
    return Response(svg, media_type="image/svg+xml")


@router.post(
    "/v1/workflows/{name}/runs", status_code=status.HTTP_201_CREATED, response_model=RunOut
)
async def start_run(
    name: str, body: RunCreate, actor: Caller, flows: Flows, request: Request
) -> RunOut:
    if not actor.role.may_infer:
        raise PermissionDeniedError(f"role '{actor.role.value}' may not start runs")
    deadline = None
    if body.deadline_s is not None:
        deadline = services_of(request).clock.now() + timedelta(seconds=body.deadline_s)
    run = await flows.service.start(
        name,
        body.inputs,
        trigger="api",
        dedupe_key=body.dedupe_key and f"api:{actor.tenant_id}:{body.dedupe_key}",
        priority=body.priority,
        deadline=deadline,
        created_by=actor.key_id,
        tenant_id=actor.tenant_id,
    )
    return run_out(run)


@router.get("/v1/runs", response_model=ListOf)
async def list_runs(
    actor: Caller,
    flows: Flows,
    workflow: str | None = None,
    state: RunState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListOf:
    tenant = None if actor.role is Role.PLATFORM_ADMIN else actor.tenant_id
    runs = await flows.service.store.runs(workflow, state, limit, tenant)
    return ListOf(data=[run_out(run) for run in runs])


@router.get("/v1/runs/{run_id}", response_model=RunOut)
async def get_run(run_id: str, actor: Caller, flows: Flows) -> RunOut:
    run = await _visible_run(flows, actor, run_id)
    return run_out(run, await flows.service.tasks(run_id))


@router.post("/v1/runs/{run_id}/cancel", response_model=RunOut)
async def cancel_run(run_id: str, actor: Caller, flows: Flows) -> RunOut:
    await _visible_run(flows, actor, run_id)
    run = await flows.service.cancel(run_id)
    return run_out(run, await flows.service.tasks(run_id))


@router.post("/v1/runs/{run_id}/retry", response_model=RunOut)
async def retry_run(run_id: str, actor: Caller, flows: Flows) -> RunOut:
    """Resume a failed or cancelled run from its failed tasks (succeeded ones are kept)."""
    await _visible_run(flows, actor, run_id)
    run = await flows.service.retry_from_failed(run_id)
    return run_out(run, await flows.service.tasks(run_id))


@router.post("/v1/runs/{run_id}/tasks/{task_id}/approve", response_model=TaskOut)
async def approve_task(
    run_id: str, task_id: str, body: Approval, actor: Caller, flows: Flows
) -> TaskOut:
    require_writer(actor)
    await _visible_run(flows, actor, run_id)
    task = await flows.service.approve(run_id, task_id, body.approved, actor.key_id, body.comment)
    return task_out(task)


@router.post(
    "/v1/workflows/hooks/{hook}", status_code=status.HTTP_202_ACCEPTED, response_model=RunOut
)
async def webhook_trigger(hook: str, request: Request, flows: Flows) -> RunOut:
    """Start a run from a signed webhook: ``X-AutoGLM-Signature: t=<unix>,v1=<HMAC-SHA256 of
    "<t>." + body>`` with the trigger's secret; the JSON body is the run's inputs. An
    ``Idempotency-Key`` header starts at most one run per key."""
    trigger = next((t for t in flows.settings.webhooks if t.name == hook), None)
    if trigger is None:
        raise NotFoundError(f"no webhook trigger '{hook}'", code="trigger_not_found")
    body = await request.body()
    signature = request.headers.get("x-autoglm-signature", "")
    if not verify_signature(trigger.secret, signature, body, int(time.time())):
        raise AuthenticationError(
            "missing or invalid X-AutoGLM-Signature", code="invalid_signature"
        )
    try:
        inputs = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the body is not JSON: {exc}", param="body") from exc
    if not isinstance(inputs, dict):
        raise InvalidRequestError("the body must be a JSON object (the inputs)", param="body")
    key = request.headers.get("idempotency-key")
    run = await flows.service.start(
        trigger.workflow,
        inputs,
        trigger=f"webhook:{hook}",
        dedupe_key=f"webhook:{hook}:{key}" if key else None,
    )
    return run_out(run)
