"""The release controller on a manual clock: steps advance only after their interval and only on
a passing analysis, pauses hold, a failing analysis rolls back at the next tick, the shadow
phase mirrors before any live traffic, and state is restored from the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from openautoglm.core.clock import ManualClock
from openautoglm.registry.lifecycle import Actor, VersionState
from openautoglm.registry.service import RegistryService
from openautoglm.releases.analysis import Sample, VersionTraffic
from openautoglm.releases.controller import ReleaseController
from openautoglm.releases.model import ReleaseState
from openautoglm.releases.split import TrafficSplit
from openautoglm.store.database import open_database
from openautoglm.store.registry_sql import SqlRegistryStore
from openautoglm.store.releases_sql import SqlReleaseStore
from openautoglm.tenancy.model import Principal, Role

OPERATOR = Principal(tenant_id="t", key_id="key_op", role=Role.OPERATOR)
APPROVER = Actor("key_boss", can_approve=True)


class Harness:
    def __init__(self, controller: ReleaseController, clock: ManualClock) -> None:
        self.controller = controller
        self.clock = clock

    def traffic(self, version: str, requests: int, failures: int = 0) -> None:
        for n in range(requests):
            sample = Sample(self.clock.monotonic(), n < failures, 0.05, 0.01, False)
            self.controller.traffic.record("chat", version, sample)

    def later(self, seconds: float) -> None:
        self.clock.advance(seconds)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    clock = ManualClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    registry = RegistryService(SqlRegistryStore(engine), clock)
    await registry.register_model(OPERATOR, "chat")
    for version in ("v1", "v2"):
        await registry.add_version(OPERATOR, "chat", version, [{"backend": "echo"}])
        await registry.transition(OPERATOR, "chat", version, VersionState.PENDING_APPROVAL)
        await registry.move(APPROVER, "chat", version, VersionState.DEPLOYED)
    controller = ReleaseController(
        SqlReleaseStore(engine), registry, TrafficSplit(), VersionTraffic(), clock
    )
    await controller.load()
    controller.apply_routes()
    yield Harness(controller, clock)
    await engine.dispose()


async def test_steps_advance_after_their_interval_on_a_passing_analysis(harness: Harness) -> None:
    controller = harness.controller
    release = await controller.start(OPERATOR, "chat", "v2", [10, 50, 100], 60, {"min_requests": 5})
    assert controller.split.route("chat").candidate is None  # type: ignore[union-attr]
    controller.apply_routes()  # the runtime does this once the candidate's instances are up
    assert controller.split.route("chat").weight == 10.0  # type: ignore[union-attr]
    harness.later(59)
    harness.traffic("v2", 10)
    assert await controller.tick() == []  # the step has not lasted its interval yet
    harness.later(1)
    [advanced] = await controller.tick()
    assert (advanced.step_index, advanced.weight) == (1, 50.0)
    assert controller.split.route("chat").weight == 50.0  # type: ignore[union-attr]
    harness.later(60)
    harness.traffic("v2", 10)
    [last] = await controller.tick()
    assert last.weight == 100.0
    harness.later(59)
    harness.traffic("v2", 10)
    harness.later(1)
    [promoted] = await controller.tick()
    assert promoted.state is ReleaseState.PROMOTED
    assert await controller.registry.aliases("chat") == {"champion": "v2"}
    route = controller.split.route("chat")
    assert route is not None and (route.stable, route.candidate) == ("v2", None)
    assert (await controller.get(release.id)).state is ReleaseState.PROMOTED


async def test_too_few_requests_hold_a_step_and_a_pause_holds_it_too(harness: Harness) -> None:
    controller = harness.controller
    release = await controller.start(OPERATOR, "chat", "v2", [10, 100], 60, {"min_requests": 20})
    harness.traffic("v2", 5)
    harness.later(600)
    assert await controller.tick() == []  # inconclusive: waits for traffic
    paused = await controller.pause(OPERATOR, release.id)
    harness.later(600)
    harness.traffic("v2", 30)
    assert await controller.tick() == []
    assert (await controller.get(release.id)).step_index == 0
    resumed = await controller.resume(OPERATOR, release.id)
    assert resumed.step_started_at == harness.clock.now()  # paused time does not count
    assert paused.state is ReleaseState.PAUSED
    harness.later(30)
    harness.traffic("v2", 30)
    harness.later(30)
    [advanced] = await controller.tick()
    assert advanced.weight == 100.0


async def test_a_failing_analysis_rolls_back_at_the_next_tick(harness: Harness) -> None:
    controller = harness.controller
    release = await controller.start(
        OPERATOR, "chat", "v2", [10, 100], 600, {"min_requests": 10, "max_error_rate": 0.05}
    )
    harness.traffic("v2", 9, failures=3)
    assert await controller.tick() == []  # 9 requests: not enough to judge yet
    harness.traffic("v2", 1)
    [rolled] = await controller.tick()
    assert rolled.state is ReleaseState.ROLLED_BACK
    assert rolled.reason is not None and "error rate 30.0% > 5.0%" in rolled.reason
    route = controller.split.route("chat")
    assert route is not None and (route.stable, route.candidate) == ("v1", None)
    version = await controller.registry.version("chat", "v2")
    assert version.state is VersionState.NEEDS_ITERATION
    assert await controller.registry.aliases("chat") == {"champion": "v1"}
    assert (await controller.get(release.id)).finished_at == harness.clock.now()


async def test_slow_answers_roll_back_on_the_p99_threshold(harness: Harness) -> None:
    controller = harness.controller
    await controller.start(OPERATOR, "chat", "v2", [10, 100], 600, {"min_requests": 5})
    for _ in range(10):
        sample = Sample(harness.clock.monotonic(), False, 1.5, 0.2, False)
        controller.traffic.record("chat", "v2", sample)
    [rolled] = await controller.tick()
    assert rolled.reason is not None and "p99 latency 1.500 s > 1.000 s" in rolled.reason


async def test_the_shadow_phase_mirrors_before_any_live_traffic(harness: Harness) -> None:
    controller = harness.controller
    release = await controller.start(
        OPERATOR, "chat", "v2", [25, 100], 60, {"min_requests": 5}, shadow=True
    )
    assert (release.step_index, release.weight) == (-1, 0.0)
    controller.apply_routes()
    split = controller.split
    assert {split.choose("chat", None, None, {"v1", "v2"}) for _ in range(50)} == {"v1"}
    assert split.mirror("chat", None) == "v2"
    assert split.mirror("chat", "a-conversation") is None  # not idempotent: never copied
    harness.later(59)
    harness.traffic("v2", 10)
    harness.later(1)
    [live] = await controller.tick()
    assert (live.step_index, live.weight) == (0, 25.0)
    assert split.mirror("chat", None) is None


async def test_state_is_restored_from_the_store(harness: Harness, tmp_path: Path) -> None:
    controller = harness.controller
    release = await controller.start(OPERATOR, "chat", "v2", [30, 100], 600)
    fresh = ReleaseController(
        controller.store, controller.registry, TrafficSplit(), VersionTraffic(), harness.clock
    )
    await fresh.load()
    fresh.apply_routes()
    assert fresh.active("chat") == release
    assert fresh.serving() == {"chat": {"v1", "v2"}}
    route = fresh.split.route("chat")
    assert route is not None and (route.candidate, route.weight) == ("v2", 30.0)


async def test_a_version_in_a_release_cannot_be_moved_by_hand(harness: Harness) -> None:
    from openautoglm.core.errors import ConflictError

    controller = harness.controller
    release = await controller.start(OPERATOR, "chat", "v2", [10, 100], 600)
    for version, target in (("v2", VersionState.DEPRECATED), ("v1", VersionState.DEPRECATED)):
        with pytest.raises(ConflictError) as refused:
            await controller.registry.transition(OPERATOR, "chat", version, target)
        assert refused.value.code == "version_in_release" and release.id in str(refused.value)
    rolled = await controller.rollback(OPERATOR, release.id, "changed our minds")
    assert rolled.state is ReleaseState.ROLLED_BACK  # the release can still end


async def test_a_candidate_without_instances_gets_no_traffic(harness: Harness) -> None:
    controller = harness.controller
    await controller.start(OPERATOR, "chat", "v2", [50, 100], 600)
    controller.apply_routes(lambda model, version: version != "v2")
    route = controller.split.route("chat")
    assert route is not None and (route.stable, route.candidate) == ("v1", None)
    controller.apply_routes(lambda model, version: True)
    route = controller.split.route("chat")
    assert route is not None and (route.candidate, route.weight) == ("v2", 50.0)


async def test_rolling_back_a_promotion_waits_for_the_stable_instances(harness: Harness) -> None:
    controller = harness.controller
    release = await controller.start(OPERATOR, "chat", "v2", [100], 600)
    await controller.promote(OPERATOR, release.id)
    assert controller.split.route("chat").stable == "v2"  # type: ignore[union-attr]
    await controller.rollback(OPERATOR, release.id, None)
    # the old stable's instances were drained after the promotion: the route moves at the
    # next sync, after they started again, not before
    assert controller.split.route("chat").stable == "v2"  # type: ignore[union-attr]
    assert controller.serving() == {"chat": {"v1"}}
    controller.apply_routes()
    assert controller.split.route("chat").stable == "v1"  # type: ignore[union-attr]
