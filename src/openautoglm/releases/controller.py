"""The release controller: starts releases, analyses them on live traffic, advances, promotes
and rolls back.

Every ``tick`` (``registry.release_tick_s``, 0.5 s by default) each active release's candidate
is analysed over its sliding window (``releases/analysis.py``); a failing verdict rolls the
release back at once — the traffic split sends everything to the stable version in this process
before the tick returns, other replicas follow on their next reload. A running release whose
step has lasted ``interval_s`` advances when its verdict passes (an inconclusive one — too few
requests — waits), and after the last step the candidate is promoted to champion.

A release's start and end are written in one transaction with the candidate's lifecycle move and
alias changes (and the webhook deliveries), over the revision they were read at: of two replicas
deciding at once one wins, and a crash leaves all of it or none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from openautoglm.core.clock import Clock
from openautoglm.core.errors import ConflictError, InvalidRequestError, NotFoundError
from openautoglm.core.ids import new_object_id
from openautoglm.registry.lifecycle import Actor, VersionState
from openautoglm.registry.service import RegistryService, actor_of, require_writer
from openautoglm.releases.analysis import (
    Verdict,
    VersionTraffic,
    analyse_version,
    release_report,
)
from openautoglm.releases.model import (
    Release,
    ReleaseState,
    ReleaseStore,
    checked_steps,
    release_event,
)
from openautoglm.releases.split import Route, TrafficSplit
from openautoglm.releases.thresholds import Thresholds
from openautoglm.tenancy.model import Principal

logger = logging.getLogger(__name__)
CONTROLLER = Actor("release-controller", can_approve=False)


class ReleaseController:
    """Owns the traffic split of every registry model and the releases that change it."""

    def __init__(
        self,
        store: ReleaseStore,
        registry: RegistryService,
        split: TrafficSplit,
        traffic: VersionTraffic,
        clock: Clock,
    ) -> None:
        self.store = store
        self.registry = registry
        self.split = split
        self.traffic = traffic
        self._clock = clock
        self._active: dict[str, Release] = {}
        self._champions: dict[str, str] = {}
        registry.release_guard = self._guard

    async def _guard(self, model: str, version: str) -> str | None:
        for release in await self.store.list(model, True):
            if version in (release.stable_version, release.candidate_version):
                return (
                    f"{model} version {version} is in release {release.id}: promote, abort "
                    "or roll back the release instead"
                )
        return None

    # reading state

    def active(self, model: str) -> Release | None:
        return self._active.get(model)

    def serving(self) -> dict[str, set[str]]:
        """For each registry model: the versions that take traffic (champion, candidate)."""
        serving: dict[str, set[str]] = {
            model: {version} for model, version in self._champions.items()
        }
        for model, release in self._active.items():
            serving.setdefault(model, set()).update(
                {release.stable_version, release.candidate_version}
            )
        return serving

    async def load(self) -> None:
        """Read champions and active releases from the store (start, and every reload)."""
        champions: dict[str, str] = {}
        for model in await self.registry.store.list_models():
            champion = (await self.registry.aliases(model.name)).get("champion")
            if champion is not None:
                champions[model.name] = champion
        self._champions = champions
        self._active = {release.model: release for release in await self.store.list(None, True)}

    def apply_routes(self, available: Callable[[str, str], bool] | None = None) -> None:
        """Point the split at what was loaded (after the versions' instances are up). A
        candidate whose instances are not ``available`` gets no traffic."""
        for model in set(self.split.models()) - set(self._champions) - set(self._active):
            self.split.clear(model)
        for model, champion in self._champions.items():
            release = self._active.get(model)
            if release is None:
                self.split.set_route(model, Route(champion, None, 0.0, None))
            elif available is not None and not available(model, release.candidate_version):
                logger.warning(
                    "candidate %s of %s has no instances: no traffic",
                    release.candidate_version,
                    model,
                )
                self.split.set_route(model, Route(release.stable_version, None, 0.0, None))
            else:
                self._route(release)

    def _route(self, release: Release) -> None:
        if release.state is ReleaseState.PROMOTED:
            route = Route(release.candidate_version, None, 0.0, None)
        elif not release.state.active:
            route = Route(release.stable_version, None, 0.0, None)
        else:
            mirroring = release.mirroring  # the shadow phase copies every idempotent request
            route = Route(
                release.stable_version,
                release.candidate_version,
                100.0 if mirroring else release.weight,
                release.id,
                shadow=mirroring,
            )
        self.split.set_route(release.model, route)

    async def get(self, release_id: str) -> Release:
        found = await self.store.get(release_id)
        if found is None:
            raise NotFoundError(f"release '{release_id}' not found", code="release_not_found")
        return found

    def analysis(self, release: Release) -> dict[str, Any]:
        """Live window metrics of both versions and the candidate's verdict."""
        return release_report(
            self.traffic,
            release.model,
            release.stable_version,
            release.candidate_version,
            Thresholds.from_dict(release.thresholds),
            self._clock.monotonic(),
        )

    # operator actions

    async def start(
        self,
        principal: Principal,
        model: str,
        candidate: str,
        steps: Sequence[float],
        interval_s: int,
        thresholds: Mapping[str, Any] | None = None,
        shadow: bool = False,
    ) -> Release:
        require_writer(principal)
        planned = checked_steps(steps)
        if interval_s < 1:
            raise InvalidRequestError("interval must be at least 1 s", param="interval_s")
        Thresholds.from_dict(thresholds or {})
        registered = await self.registry.model(model)
        chosen = Thresholds.from_dict({**registered.thresholds, **(thresholds or {})})
        for active in await self.store.list(model, True):
            raise ConflictError(
                f"model '{model}' already has an active release ({active.id})",
                code="release_active",
            )
        stable = (await self.registry.aliases(model)).get("champion")
        if stable is None:
            raise ConflictError(
                f"model '{model}' has no champion to release from; approve a version first",
                code="no_champion",
            )
        if stable == candidate:
            raise ConflictError(f"{model} version {candidate} is already the champion")
        version = await self.registry.version(model, candidate)
        if version.state is not VersionState.DEPLOYED:
            raise ConflictError(
                f"a release candidate must be approved (deployed); {model} version {candidate} "
                f"is {version.state.value}",
                code="version_not_deployed",
            )
        now = self._clock.now()
        release = Release(
            id=new_object_id("rel"),
            model=model,
            state=ReleaseState.RUNNING,
            stable_version=stable,
            candidate_version=candidate,
            steps=planned,
            interval_s=interval_s,
            step_index=-1 if shadow else 0,
            shadow=shadow,
            thresholds=chosen.as_dict(),
            started_at=now,
            step_started_at=now,
            started_by=principal.key_id,
        )

        async def write(connection: Any) -> None:
            await self.store.add_in(connection, release, [release_event(release, "started")])

        await self.registry.move(
            actor_of(principal),
            model,
            candidate,
            VersionState.MONITORING,
            extra_aliases={"challenger": candidate},
            also=write,
        )
        self.traffic.forget(model, candidate)  # judge the candidate on this release's traffic
        self._active[model] = release
        self._record(release, "started", actor_of(principal))
        return release

    async def pause(self, principal: Principal, release_id: str) -> Release:
        require_writer(principal)
        release = await self._active_release(release_id, ReleaseState.RUNNING)
        paused = replace(release, state=ReleaseState.PAUSED)
        return await self._save(paused, "paused", actor_of(principal))

    async def resume(self, principal: Principal, release_id: str) -> Release:
        require_writer(principal)
        release = await self._active_release(release_id, ReleaseState.PAUSED)
        # the paused time does not count towards the step
        resumed = replace(release, state=ReleaseState.RUNNING, step_started_at=self._clock.now())
        return await self._save(resumed, "resumed", actor_of(principal))

    async def promote(self, principal: Principal, release_id: str) -> Release:
        """Skip the remaining steps: the candidate becomes the champion now."""
        require_writer(principal)
        release = await self._active_release(release_id, None)
        return await self._promote(release, actor_of(principal), "promoted by an operator")

    async def abort(self, principal: Principal, release_id: str, reason: str | None) -> Release:
        """Stop: all traffic to stable; the candidate stays approved (``deployed``)."""
        require_writer(principal)
        release = await self._active_release(release_id, None)
        return await self._finish(
            release, ReleaseState.ABORTED, actor_of(principal), reason or "aborted", False
        )

    async def rollback(self, principal: Principal, release_id: str, reason: str | None) -> Release:
        """Instantly back to the stable version, without analysis — also after a promotion."""
        require_writer(principal)
        release = await self.get(release_id)
        actor = actor_of(principal)
        reason = reason or "rolled back by an operator"
        if release.state.active:
            return await self._finish(release, ReleaseState.ROLLED_BACK, actor, reason, True)
        latest = await self.store.latest(release.model)
        champion = (await self.registry.aliases(release.model)).get("champion")
        if (
            release.state is not ReleaseState.PROMOTED
            or latest is None
            or latest.id != release.id
            or champion != release.candidate_version
        ):
            raise ConflictError(
                f"release {release.id} is {release.state.value}; only an active release or the "
                "latest promoted one can be rolled back",
                code="invalid_release_state",
            )
        stable = await self.registry.version(release.model, release.stable_version)
        if stable.state not in (VersionState.DEPLOYED, VersionState.MONITORING):
            raise ConflictError(
                f"the previous stable version {stable.version} is {stable.state.value}",
                code="version_not_deployed",
            )
        finished = await self._end(
            replace(release, state=ReleaseState.ROLLED_BACK, reason=reason),
            "rolled_back",
            actor,
            VersionState.NEEDS_ITERATION,
            {"champion": release.stable_version},
        )
        self._champions[release.model] = release.stable_version
        return finished  # traffic moves at the next sync, once the stable's instances run

    # the loop

    async def tick(self) -> list[Release]:
        """Analyse every active release; roll back, advance or promote. Returns what changed."""
        changed: list[Release] = []
        now = self._clock.now()
        for release in list(self._active.values()):
            try:
                verdict = self._verdict(release)
                if verdict.status == "fail":
                    reason = "analysis failed: " + "; ".join(verdict.breaches)
                    changed.append(
                        await self._finish(
                            release, ReleaseState.ROLLED_BACK, CONTROLLER, reason, True
                        )
                    )
                    continue
                due = (now - release.step_started_at).total_seconds() >= release.interval_s
                if release.state is ReleaseState.RUNNING and due and verdict.status == "pass":
                    changed.append(await self._advance(release))
            except ConflictError:
                logger.info("release %s changed elsewhere; reloading", release.id)
                await self._reload_one(release)
        return changed

    def _verdict(self, release: Release) -> Verdict:
        thresholds = Thresholds.from_dict(release.thresholds)
        return analyse_version(
            self.traffic,
            release.model,
            release.candidate_version,
            self._clock.monotonic(),
            thresholds,
        )

    async def _advance(self, release: Release) -> Release:
        if release.last_step:
            return await self._promote(release, CONTROLLER, "every step passed its analysis")
        advanced = replace(
            release, step_index=release.step_index + 1, step_started_at=self._clock.now()
        )
        return await self._save(advanced, "advanced", CONTROLLER)

    async def _promote(self, release: Release, actor: Actor, reason: str) -> Release:
        finished = await self._end(
            replace(
                release,
                state=ReleaseState.PROMOTED,
                finished_at=self._clock.now(),
                reason=reason,
            ),
            "promoted",
            actor,
            VersionState.DEPLOYED,
            {"champion": release.candidate_version, "challenger": None},
        )
        self._champions[release.model] = release.candidate_version
        self._route(finished)
        return finished

    async def _finish(
        self, release: Release, state: ReleaseState, actor: Actor, reason: str, failed: bool
    ) -> Release:
        finished = await self._end(
            replace(release, state=state, finished_at=self._clock.now(), reason=reason),
            state.value,
            actor,
            VersionState.NEEDS_ITERATION if failed else VersionState.DEPLOYED,
            {"challenger": None},
        )
        self._route(finished)  # traffic is back on stable
        return finished

    async def _end(
        self,
        release: Release,
        what: str,
        actor: Actor,
        target: VersionState,
        aliases: Mapping[str, str | None],
    ) -> Release:
        """Write a release's end and its candidate's lifecycle move in one transaction."""
        saved = replace(release, revision=release.revision + 1)

        async def write(connection: Any) -> None:
            await self.store.update_in(connection, saved, [release_event(saved, what)])

        await self.registry.move(
            actor,
            release.model,
            release.candidate_version,
            target,
            release.reason,
            extra_aliases=aliases,
            also=write,
        )
        self._active.pop(release.model, None)
        self._record(saved, what, actor)
        return saved

    async def _save(self, release: Release, what: str, actor: Actor) -> Release:
        saved = await self.store.update(
            replace(release, revision=release.revision + 1), [release_event(release, what)]
        )
        if saved.state.active:
            self._active[saved.model] = saved
            self._route(saved)
        self._record(saved, what, actor)
        return saved

    def _record(self, release: Release, what: str, actor: Actor) -> None:
        logger.info("release %s of %s: %s (%s)", release.id, release.model, what, release.reason)
        self.registry.record(
            actor.user_id,
            f"release.{what}",
            release.model,
            release.candidate_version,
            release_event(release, what).data,
        )

    async def _active_release(self, release_id: str, state: ReleaseState | None) -> Release:
        release = await self.get(release_id)
        if not release.state.active or (state is not None and release.state is not state):
            wanted = state.value if state is not None else "running or paused"
            raise ConflictError(
                f"release {release_id} is {release.state.value}, not {wanted}",
                code="invalid_release_state",
            )
        return release

    async def _reload_one(self, release: Release) -> None:
        fresh = await self.store.get(release.id)
        if fresh is None or not fresh.state.active:
            self._active.pop(release.model, None)
            if fresh is not None:
                self._route(fresh)
        else:
            self._active[release.model] = fresh
            self._route(fresh)
