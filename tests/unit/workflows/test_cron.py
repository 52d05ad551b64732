"""Cron triggers: on time, once per slot across replicas and restarts, catch-up after an outage."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import InvalidRequestError
from openautoglm.workflows.model import Run, RunState
from openautoglm.workflows.triggers.cron import (
    CatchUp,
    CronSchedule,
    CronScheduler,
    MemoryCronState,
    next_fire,
)

MIDNIGHT = datetime(2026, 1, 1, tzinfo=UTC)


class FakeStarter:
    """A RunStarter in memory that honours dedupe keys, as the real one must."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self.created: list[Run] = []
        self._by_key: dict[str, Run] = {}
        self.fail = False
        self.created_one = asyncio.Event()

    async def start(
        self,
        workflow: str,
        inputs: Mapping[str, Any],
        *,
        trigger: str,
        dedupe_key: str | None = None,
        priority: int | None = None,
        deadline: datetime | None = None,
    ) -> Run:
        await asyncio.sleep(0)  # let concurrent replicas interleave here
        if self.fail:
            raise ConnectionError("store is down")
        if dedupe_key is not None and dedupe_key in self._by_key:
            return self._by_key[dedupe_key]
        run = Run(
            id=f"run-{len(self.created)}",
            workflow=workflow,
            workflow_version=1,
            state=RunState.QUEUED,
            inputs=dict(inputs),
            created_at=self._clock.now(),
            priority=5 if priority is None else priority,
            trigger=trigger,
            dedupe_key=dedupe_key,
        )
        self.created.append(run)
        self.created_one.set()
        if dedupe_key is not None:
            self._by_key[dedupe_key] = run
        return run

    async def wait_for(self, count: int) -> None:
        while len(self.created) < count:
            self.created_one.clear()
            await self.created_one.wait()

    def slots(self) -> list[str]:
        return [run.inputs["scheduled_at"] for run in self.created]


def every_5_min(catch_up: CatchUp = "one", **extra: Any) -> CronSchedule:
    return CronSchedule(
        name="report", workflow="daily-report", cron="*/5 * * * *", catch_up=catch_up, **extra
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(MIDNIGHT)


@pytest.fixture
def starter(clock: ManualClock) -> FakeStarter:
    return FakeStarter(clock)


async def test_fires_on_time_and_once_per_slot(clock: ManualClock, starter: FakeStarter) -> None:
    schedule = every_5_min(inputs={"team": "ops"}, priority=2)
    scheduler = CronScheduler([schedule], starter, MemoryCronState(), clock)
    assert await scheduler.tick() == []
    clock.advance(299)
    assert await scheduler.tick() == []
    clock.advance(1)
    (run,) = await scheduler.tick()
    assert run.inputs == {"team": "ops", "scheduled_at": "2026-01-01T00:05:00+00:00"}
    assert run.dedupe_key == "cron:report:2026-01-01T00:05:00+00:00"
    assert (run.workflow, run.trigger, run.priority) == ("daily-report", "cron:report", 2)
    clock.advance(0.5)
    assert await scheduler.tick() == []
    assert len(starter.created) == 1


async def test_two_replicas_fire_each_slot_once(clock: ManualClock, starter: FakeStarter) -> None:
    state = MemoryCronState()
    replicas = [CronScheduler([every_5_min()], starter, state, clock) for _ in range(2)]
    for _ in range(3):
        clock.advance(300)
        await asyncio.gather(*(replica.tick() for replica in replicas))
    assert starter.slots() == [
        "2026-01-01T00:05:00+00:00",
        "2026-01-01T00:10:00+00:00",
        "2026-01-01T00:15:00+00:00",
    ]


async def test_a_restart_does_not_fire_a_slot_again(
    clock: ManualClock, starter: FakeStarter
) -> None:
    state = MemoryCronState()
    clock.advance(300)
    before = CronScheduler([every_5_min()], starter, state, clock)
    await before.tick()
    clock.advance(300)
    await before.tick()
    restarted = CronScheduler([every_5_min()], starter, state, clock)
    assert await restarted.tick() == []
    clock.advance(300)
    await restarted.tick()
    assert len(starter.created) == 2
    assert starter.slots()[-1] == "2026-01-01T00:15:00+00:00"


async def test_a_fire_started_but_not_recorded_is_not_doubled_by_a_restart(
    clock: ManualClock, starter: FakeStarter
) -> None:
    class ForgetfulState(MemoryCronState):
        """Loses the first record, as a crash between start and record would."""

        forgot = False

        async def record_fire(self, name: str, at: datetime) -> None:
            if not self.forgot and at > MIDNIGHT:
                self.forgot = True
                return
            await super().record_fire(name, at)

    state = ForgetfulState()
    await CronScheduler([every_5_min()], starter, state, clock).tick()
    clock.advance(300)
    await CronScheduler([every_5_min()], starter, state, clock).tick()
    assert await state.last_fire("report") == MIDNIGHT
    await CronScheduler([every_5_min()], starter, state, clock).tick()
    assert len(starter.created) == 1
    assert await state.last_fire("report") == MIDNIGHT + timedelta(minutes=5)


@pytest.mark.parametrize(("catch_up", "expected"), [("skip", 0), ("one", 1), ("all", 12)])
async def test_catch_up_after_a_one_hour_outage(
    clock: ManualClock, starter: FakeStarter, catch_up: CatchUp, expected: int
) -> None:
    state = MemoryCronState()
    await CronScheduler([every_5_min(catch_up)], starter, state, clock).tick()
    clock.advance(300)
    await CronScheduler([every_5_min(catch_up)], starter, state, clock).tick()
    assert starter.slots() == ["2026-01-01T00:05:00+00:00"]

    clock.advance(3600 + 30)  # down from 00:05 to 01:05:30: slots 00:10 … 01:05 are missed
    restarted = CronScheduler([every_5_min(catch_up)], starter, state, clock)
    caught_up = await restarted.tick()
    assert len(caught_up) == expected
    fired = starter.slots()[1:]
    if catch_up == "one":
        assert fired == ["2026-01-01T01:05:00+00:00"]
    if catch_up == "all":
        assert fired[0] == "2026-01-01T00:10:00+00:00"
        assert fired == sorted(fired)
    assert await state.last_fire("report") == datetime(2026, 1, 1, 1, 5, tzinfo=UTC)
    assert await restarted.tick() == []

    clock.advance(270)
    (resumed,) = await restarted.tick()
    assert resumed.inputs["scheduled_at"] == "2026-01-01T01:10:00+00:00"
    assert len(starter.created) == 1 + expected + 1


async def test_catch_up_all_is_bounded_by_max_catch_up(
    clock: ManualClock, starter: FakeStarter
) -> None:
    schedule = every_5_min("all", max_catch_up=3)
    state = MemoryCronState()
    await CronScheduler([schedule], starter, state, clock).tick()
    clock.advance(3600 + 30)
    await CronScheduler([schedule], starter, state, clock).tick()
    assert starter.slots() == [
        "2026-01-01T00:50:00+00:00",
        "2026-01-01T00:55:00+00:00",
        "2026-01-01T01:00:00+00:00",
    ]


async def test_timezone_is_honoured(clock: ManualClock, starter: FakeStarter) -> None:
    schedule = CronSchedule(
        name="morning", workflow="digest", cron="0 9 * * *", timezone="Asia/Shanghai"
    )
    assert next_fire(schedule, MIDNIGHT) == datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    scheduler = CronScheduler([schedule], starter, MemoryCronState(), clock)
    await scheduler.tick()
    clock.advance(3599)
    assert await scheduler.tick() == []
    clock.advance(1)
    (run,) = await scheduler.tick()
    assert run.inputs["scheduled_at"] == "2026-01-01T01:00:00+00:00"


@pytest.mark.parametrize(
    ("cron", "timezone", "message"),
    [
        ("* * *", "UTC", "exactly five"),
        ("0 0 * * * *", "UTC", "exactly five"),
        ("61 * * * *", "UTC", "not a valid cron expression"),
        ("0 9 * * funday", "UTC", "not a valid cron expression"),
        ("0 9 * * *", "Mars/Olympus", "unknown timezone"),
    ],
)
def test_invalid_schedules_are_refused_readably(cron: str, timezone: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message) as caught:
        CronSchedule(name="bad", workflow="w", cron=cron, timezone=timezone)
    assert "cron schedule 'bad'" in caught.value.message
    assert caught.value.code == "invalid_schedule"


def test_repeated_schedule_names_are_refused(clock: ManualClock, starter: FakeStarter) -> None:
    with pytest.raises(InvalidRequestError, match="unique"):
        CronScheduler([every_5_min(), every_5_min()], starter, MemoryCronState(), clock)


async def test_a_new_schedule_does_not_fire_the_past(
    clock: ManualClock, starter: FakeStarter
) -> None:
    clock.advance(86_400 + 17)
    scheduler = CronScheduler([every_5_min("all")], starter, MemoryCronState(), clock)
    assert await scheduler.tick() == []
    clock.advance(283)
    (run,) = await scheduler.tick()
    assert run.inputs["scheduled_at"] == "2026-01-02T00:05:00+00:00"


async def test_a_failing_starter_leaves_the_slot_for_the_next_tick(
    clock: ManualClock, starter: FakeStarter
) -> None:
    other = CronSchedule(name="other", workflow="w", cron="*/5 * * * *")
    scheduler = CronScheduler([every_5_min(), other], starter, MemoryCronState(), clock)
    await scheduler.tick()
    clock.advance(300)
    starter.fail = True
    assert await scheduler.tick() == []
    starter.fail = False
    clock.advance(0.5)
    runs = await scheduler.tick()
    assert sorted(run.dedupe_key or "" for run in runs) == [
        "cron:other:2026-01-01T00:05:00+00:00",
        "cron:report:2026-01-01T00:05:00+00:00",
    ]


async def test_run_ticks_until_cancelled(clock: ManualClock, starter: FakeStarter) -> None:
    scheduler = CronScheduler([every_5_min()], starter, MemoryCronState(), clock)
    clock.advance(300)
    await scheduler.tick()  # first sight: the baseline is the scheduler's start, 00:00
    task = asyncio.create_task(scheduler.run(interval_s=0.01))
    try:
        clock.advance(300)
        await asyncio.wait_for(starter.wait_for(2), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert starter.slots() == ["2026-01-01T00:05:00+00:00", "2026-01-01T00:10:00+00:00"]
