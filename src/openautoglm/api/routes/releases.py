"""Releases API: canary releases of registry models, with live analysis and manual controls.

A release moves a model's traffic from its champion to an approved candidate in weighted steps;
each step advances when its analysis passes, and a failing analysis rolls it back within a tick.
Operators, admins and platform admins start and steer releases; any key reads them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from openautoglm.api.routes.admin import Caller, ListOf
from openautoglm.api.routes.inference import ERRORS
from openautoglm.api.routes.registry import Reg
from openautoglm.registry_wiring import Registry
from openautoglm.releases.model import Release, ReleaseState
from openautoglm.tenancy.model import Principal

router = APIRouter(prefix="/v1/releases", tags=["releases"], responses=ERRORS)


class ReleaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=200)
    candidate: str = Field(min_length=1, max_length=100)
    steps: list[float] = Field(
        default_factory=lambda: [10.0, 25.0, 50.0, 100.0],
        description="the candidate's percent of traffic at each step, rising, ending at 100",
    )
    interval_s: int = Field(default=60, ge=1, le=7 * 86400, description="how long each step lasts")
    thresholds: dict[str, Any] = Field(
        default_factory=dict,
        description="analysis thresholds over the model's defaults: max_error_rate (0.05), "
        "max_p99_latency_s (1.0), max_p99_ttft_s, max_policy_block_rate, window_s (60), "
        "min_requests (20), custom",
    )
    shadow: bool = Field(
        default=False,
        description="first copy idempotent requests to the candidate for one interval",
    )


class ReleaseAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=4000)


class ReleaseOut(BaseModel):
    object: Literal["release"] = "release"
    id: str
    model: str
    state: ReleaseState
    stable: str
    candidate: str
    steps: list[float]
    step: int = Field(description="index into steps; -1 during the shadow phase")
    weight: float = Field(description="the candidate's percent of live traffic now")
    shadow: bool
    interval_s: int
    thresholds: dict[str, Any]
    started_by: str | None
    started_at: int
    step_started_at: int
    finished_at: int | None
    reason: str | None
    analysis: dict[str, Any] | None = Field(
        default=None, description="live window metrics per version and the verdict"
    )


def release_out(release: Release, analysis: dict[str, Any] | None = None) -> ReleaseOut:
    return ReleaseOut(
        id=release.id,
        model=release.model,
        state=release.state,
        stable=release.stable_version,
        candidate=release.candidate_version,
        steps=list(release.steps),
        step=release.step_index,
        weight=release.weight,
        shadow=release.shadow,
        interval_s=release.interval_s,
        thresholds=dict(release.thresholds),
        started_by=release.started_by,
        started_at=int(release.started_at.timestamp()),
        step_started_at=int(release.step_started_at.timestamp()),
        finished_at=None if release.finished_at is None else int(release.finished_at.timestamp()),
        reason=release.reason,
        analysis=analysis,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ReleaseOut)
async def start_release(body: ReleaseCreate, actor: Caller, registry: Reg) -> ReleaseOut:
    release = await registry.runtime.run_locked(
        lambda: registry.releases.start(
            actor,
            body.model,
            body.candidate,
            body.steps,
            body.interval_s,
            body.thresholds,
            body.shadow,
        )
    )
    await registry.runtime.sync()  # the candidate's instances start, then traffic moves
    return release_out(release)


@router.get("", response_model=ListOf)
async def list_releases(
    _actor: Caller,
    registry: Reg,
    model: Annotated[str | None, Query(max_length=200)] = None,
    active: bool = False,
) -> ListOf:
    releases = await registry.releases.store.list(model, active)
    return ListOf(data=[release_out(release) for release in releases])


@router.get("/{release_id}", response_model=ReleaseOut)
async def get_release(release_id: str, _actor: Caller, registry: Reg) -> ReleaseOut:
    release = await registry.releases.get(release_id)
    return release_out(release, registry.releases.analysis(release))


async def _act(
    actor: Principal, registry: Registry, release_id: str, action: str, reason: str | None
) -> ReleaseOut:
    controller = registry.releases
    actions: dict[str, Callable[[], Awaitable[Release]]] = {
        "pause": partial(controller.pause, actor, release_id),
        "resume": partial(controller.resume, actor, release_id),
        "promote": partial(controller.promote, actor, release_id),
        "abort": partial(controller.abort, actor, release_id, reason),
        "rollback": partial(controller.rollback, actor, release_id, reason),
    }
    act = actions[action]
    release = await registry.runtime.run_locked(act)
    await registry.runtime.sync()
    return release_out(release, controller.analysis(release))


def _action_route(action: str, summary: str) -> None:
    async def act(
        release_id: str, actor: Caller, registry: Reg, body: ReleaseAction | None = None
    ) -> ReleaseOut:
        return await _act(actor, registry, release_id, action, body.reason if body else None)

    act.__name__ = f"{action}_release"
    router.add_api_route(
        f"/{{release_id}}/{action}",
        act,
        methods=["POST"],
        response_model=ReleaseOut,
        summary=summary,
    )


for _action, _summary in (
    ("pause", "Hold the release at its current step (analysis and rollback continue)"),
    ("resume", "Continue a paused release"),
    ("promote", "Make the candidate the champion now, skipping the remaining steps"),
    ("abort", "Stop: all traffic back to stable, the candidate stays approved"),
    ("rollback", "Instantly back to the previous stable (also after a promotion)"),
):
    _action_route(_action, _summary)
