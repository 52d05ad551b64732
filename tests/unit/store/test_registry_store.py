"""The registry and release stores on SQLite and PostgreSQL: one transaction per change, stale
writes refused, a failing part undoing the whole change, and webhook deliveries with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.support.databases import database_url

from openautoglm.config.registry import WebhookConfig
from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import ConflictError
from openautoglm.registry.lifecycle import Actor, VersionState, transition
from openautoglm.registry.service import RegistryService
from openautoglm.releases.model import Release, ReleaseState
from openautoglm.store.database import open_database
from openautoglm.store.registry_sql import SqlRegistryStore
from openautoglm.store.releases_sql import SqlReleaseStore
from openautoglm.store.webhooks_sql import SqlWebhookOutbox
from openautoglm.tenancy.model import Principal, Role

HOOK = WebhookConfig(name="ci", url="http://127.0.0.1:9/hook", secret="0123456789abcdef")
OPERATOR = Principal(tenant_id="t", key_id="key_op", role=Role.OPERATOR)
APPROVER = Actor("key_boss", can_approve=True)
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with database_url(request.param, tmp_path) as url:
        opened = await open_database(url)
        yield opened
        await opened.dispose()


async def deployed(engine: AsyncEngine, clock: ManualClock) -> RegistryService:
    service = RegistryService(SqlRegistryStore(engine, [HOOK]), clock)
    await service.register_model(OPERATOR, "chat")
    await service.add_version(OPERATOR, "chat", "v1", [{"backend": "echo"}])
    await service.transition(OPERATOR, "chat", "v1", VersionState.PENDING_APPROVAL)
    await service.move(APPROVER, "chat", "v1", VersionState.DEPLOYED)
    return service


def release(**changes: Any) -> Release:
    base: dict[str, Any] = {
        "id": "rel_1",
        "model": "chat",
        "state": ReleaseState.RUNNING,
        "stable_version": "v1",
        "candidate_version": "v2",
        "steps": (10.0, 100.0),
        "interval_s": 60,
        "step_index": 0,
        "shadow": False,
        "thresholds": {"max_error_rate": 0.05},
        "started_at": T0,
        "step_started_at": T0,
    }
    return Release(**{**base, **changes})


async def test_the_first_approved_version_becomes_champion_with_its_events(
    engine: AsyncEngine,
) -> None:
    service = await deployed(engine, ManualClock(T0))
    assert await service.aliases("chat") == {"champion": "v1"}
    version = await service.version("chat", "v1")
    assert (version.state, version.submitted_by, version.revision) == (
        VersionState.DEPLOYED,
        "key_op",
        3,
    )
    history = await service.history("chat", "v1")
    assert [(t.from_state.value, t.to_state.value, t.actor) for t in history] == [
        ("development", "pending_approval", "key_op"),
        ("pending_approval", "deployed", "key_boss"),
    ]
    events = sorted(d.event for d in await SqlWebhookOutbox(engine).list(100))
    assert events == ["alias.moved", "version.transitioned", "version.transitioned"]


async def test_a_stale_transition_is_refused_and_changes_nothing(engine: AsyncEngine) -> None:
    clock = ManualClock(T0)
    service = await deployed(engine, clock)
    store = service.store
    stale = await store.get_version("chat", "v1")
    assert stale is not None
    await service.move(APPROVER, "chat", "v1", VersionState.MONITORING)
    moved = transition(
        model="chat",
        version="v1",
        current=stale.state,
        target=VersionState.NEEDS_ITERATION,
        actor=APPROVER,
        submitted_by=stale.submitted_by,
        at=clock.now(),
    )
    with pytest.raises(ConflictError) as refused:
        await store.apply_transition(stale, moved, [], None)
    assert refused.value.code == "concurrent_change"
    assert (await service.version("chat", "v1")).state is VersionState.MONITORING
    assert len(await service.history("chat", "v1")) == 3


async def test_concurrent_approvals_of_one_version_have_one_winner(engine: AsyncEngine) -> None:
    clock = ManualClock(T0)
    service = RegistryService(SqlRegistryStore(engine), clock)
    await service.register_model(OPERATOR, "chat")
    await service.add_version(OPERATOR, "chat", "v1", [{"backend": "echo"}])
    await service.transition(OPERATOR, "chat", "v1", VersionState.PENDING_APPROVAL)
    outcomes = await asyncio.gather(
        *(service.move(APPROVER, "chat", "v1", VersionState.DEPLOYED) for _ in range(4)),
        return_exceptions=True,
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
    assert all(isinstance(o, ConflictError) for o in outcomes if isinstance(o, BaseException))
    assert len(await service.history("chat", "v1")) == 2


async def test_a_release_and_its_candidates_move_commit_together_or_not_at_all(
    engine: AsyncEngine,
) -> None:
    clock = ManualClock(T0)
    service = await deployed(engine, clock)
    await service.add_version(OPERATOR, "chat", "v2", [{"backend": "echo"}])
    releases = SqlReleaseStore(engine, [HOOK])
    await releases.add(release(), [])
    duplicate = release(id="rel_2")

    async def add_duplicate(connection: Any) -> None:
        await releases.add_in(connection, duplicate, [])

    await service.transition(OPERATOR, "chat", "v2", VersionState.PENDING_APPROVAL)
    await service.move(APPROVER, "chat", "v2", VersionState.DEPLOYED)
    with pytest.raises(ConflictError) as refused:
        await service.move(
            APPROVER,
            "chat",
            "v2",
            VersionState.MONITORING,
            extra_aliases={"challenger": "v2"},
            also=add_duplicate,
        )
    assert refused.value.code == "release_active"
    # The move, its alias and its history row were rolled back with the refused release.
    assert (await service.version("chat", "v2")).state is VersionState.DEPLOYED
    assert await service.aliases("chat") == {"champion": "v1"}
    assert [r.id for r in await releases.list("chat")] == ["rel_1"]


async def test_release_updates_need_the_revision_they_read(engine: AsyncEngine) -> None:
    releases = SqlReleaseStore(engine)
    await releases.add(release(), [])
    later = T0 + timedelta(seconds=60)
    advanced = release(step_index=1, step_started_at=later, revision=2)
    await releases.update(advanced, [])
    with pytest.raises(ConflictError):
        await releases.update(release(state=ReleaseState.PAUSED, revision=2), [])
    stored = await releases.get("rel_1")
    assert stored == advanced
    assert stored is not None and stored.weight == 100.0
    assert [r.id for r in await releases.list(None, active_only=True)] == ["rel_1"]
    finished = release(
        state=ReleaseState.PROMOTED, step_index=1, finished_at=later, revision=3, reason="done"
    )
    await releases.update(finished, [])
    assert await releases.list(None, active_only=True) == []
    assert (await releases.latest("chat")) == finished
