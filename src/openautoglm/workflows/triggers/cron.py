"""Cron triggers: start a workflow run at each slot of a schedule, once per slot.

Invariant: a slot never starts two runs, across restarts and replicas. Every fire asks the
:class:`RunStarter` with ``dedupe_key = "cron:<name>:<slot>"`` (the slot as a UTC ISO time), so
when two replicas fire the same slot, or a restarted scheduler fires a slot whose run was started
but not yet recorded, the second start returns the first run. The :class:`CronState` watermark
saves that work and bounds catch-up; correctness rests on the dedupe key.

A slot is *due* when it lies after the schedule's watermark (the latest slot handled) and at or
before now. A due slot is *missed* when it is more than one tick interval late; ``catch_up`` says
what becomes of missed slots: ``"all"`` fires each (the most recent ``max_catch_up``, oldest
first), ``"one"`` fires only the most recent, ``"skip"`` fires none and moves the watermark past
them. A schedule seen for the first time starts from the scheduler's start time: it never fires
the past.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter  # type: ignore[import-untyped]

from openautoglm.core.clock import Clock
from openautoglm.core.errors import InvalidRequestError
from openautoglm.workflows.model import Run, RunStarter

logger = logging.getLogger(__name__)

CatchUp = Literal["one", "all", "skip"]
_CATCH_UPS = ("one", "all", "skip")
_CRON_FIELDS = "minute hour day-of-month month day-of-week"
_JUST_AFTER = timedelta(microseconds=1)


def _invalid(name: str, problem: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"cron schedule {name!r}: {problem}", code="invalid_schedule", param=param
    )


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """Start ``workflow`` with ``inputs`` at each slot of ``cron``, read in ``timezone``.

    ``cron`` has exactly five fields (minute hour day-of-month month day-of-week); anything else
    is refused with :class:`InvalidRequestError` when the schedule is made.
    """

    name: str
    workflow: str
    cron: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    catch_up: CatchUp = "one"
    max_catch_up: int = 100
    priority: int | None = None

    def __post_init__(self) -> None:
        fields = self.cron.split()
        if len(fields) != 5:
            raise _invalid(
                self.name,
                f"{self.cron!r} has {len(fields)} field(s); a cron expression here has exactly "
                f"five: {_CRON_FIELDS}",
                "cron",
            )
        try:
            croniter(self.cron)
        except (CroniterError, ValueError, TypeError) as exc:
            raise _invalid(
                self.name, f"{self.cron!r} is not a valid cron expression: {exc}", "cron"
            ) from exc
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise _invalid(self.name, f"unknown timezone {self.timezone!r}", "timezone") from exc
        if self.catch_up not in _CATCH_UPS:
            raise _invalid(
                self.name,
                f"catch_up must be one of {_CATCH_UPS}, not {self.catch_up!r}",
                "catch_up",
            )
        if self.max_catch_up < 1:
            raise _invalid(self.name, "max_catch_up must be at least 1", "max_catch_up")

    def dedupe_key(self, slot: datetime) -> str:
        """The key that makes a second fire of ``slot`` a no-op."""
        return f"cron:{self.name}:{slot.astimezone(UTC).isoformat()}"


def next_fire(schedule: CronSchedule, after: datetime) -> datetime:
    """The schedule's first slot strictly after ``after`` (timezone-aware), in UTC."""
    if after.tzinfo is None:
        raise ValueError("next_fire needs a timezone-aware time")
    local = after.astimezone(ZoneInfo(schedule.timezone))
    slot: datetime = croniter(schedule.cron, local).get_next(datetime)
    return slot.astimezone(UTC)


class CronState(Protocol):
    """Per schedule, the latest slot handled: fired, skipped, or the baseline of a new schedule.

    A durable adapter must: keep one row per schedule name; make ``record_fire`` an upsert that
    never moves the time backwards (``at = max(stored, at)``, e.g. ``ON CONFLICT (name) DO UPDATE
    SET at = excluded.at WHERE excluded.at > stored.at``), safe when replicas write at once, and
    committed before it returns; and return from ``last_fire`` the stored time timezone-aware in
    UTC, or ``None`` for a name never recorded. It needs no lock: double fires are stopped by the
    run's dedupe key, not here.
    """

    async def last_fire(self, name: str) -> datetime | None: ...

    async def record_fire(self, name: str, at: datetime) -> None: ...


class MemoryCronState:
    """:class:`CronState` in a dict, for tests and single-process use."""

    def __init__(self) -> None:
        self._fires: dict[str, datetime] = {}

    async def last_fire(self, name: str) -> datetime | None:
        return self._fires.get(name)

    async def record_fire(self, name: str, at: datetime) -> None:
        stored = self._fires.get(name)
        if stored is None or at > stored:
            self._fires[name] = at


@dataclass(frozen=True, slots=True)
class _Due:
    """The slots of one schedule that are due now, newest first."""

    on_time: list[datetime]
    missed: list[datetime]
    missed_truncated: bool


class CronScheduler:
    """Fires the due slots of its schedules on each :meth:`tick`; :meth:`run` ticks forever.

    Several schedulers (replicas) may share one :class:`CronState` and one starter: each slot
    still starts one run.
    """

    def __init__(
        self,
        schedules: Sequence[CronSchedule],
        starter: RunStarter,
        state: CronState,
        clock: Clock,
        *,
        interval_s: float = 1.0,
    ) -> None:
        names = [schedule.name for schedule in schedules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise InvalidRequestError(
                f"cron schedule names must be unique; repeated: {repeated}", code="invalid_schedule"
            )
        self._schedules = list(schedules)
        self._starter = starter
        self._state = state
        self._clock = clock
        self._interval_s = interval_s
        self._started_at = clock.now()
        self._last_tick_monotonic: float | None = None

    async def tick(self) -> list[Run]:
        """Fire every slot due now; the runs the starter returned, oldest slot first.

        A schedule whose state or starter fails is logged and left where it was, so its due
        slots are tried again on the next tick; the other schedules still fire.
        """
        now = self._clock.now()
        grace = self._grace()
        runs: list[Run] = []
        for schedule in self._schedules:
            try:
                runs.extend(await self._fire_due(schedule, now, grace))
            except Exception:  # any failure of a port: keep the other schedules firing
                logger.exception(
                    "cron schedule %r failed; its due slots are retried next tick", schedule.name
                )
        return runs

    async def run(self, interval_s: float = 1.0) -> None:
        """Tick every ``interval_s`` seconds until cancelled."""
        self._interval_s = interval_s
        while True:
            began = self._clock.monotonic()
            await self.tick()
            elapsed_s = self._clock.monotonic() - began
            await asyncio.sleep(max(interval_s - elapsed_s, 0.0))

    def _grace(self) -> timedelta:
        """How late a slot may be and still count as on time: one interval, plus how late this
        tick itself is (at most one more interval), so a slow tick or a late wake-up does not
        turn an on-time slot into a missed one."""
        now_monotonic = self._clock.monotonic()
        late_s = 0.0
        if self._last_tick_monotonic is not None:
            gap_s = now_monotonic - self._last_tick_monotonic
            late_s = min(max(gap_s - self._interval_s, 0.0), self._interval_s)
        self._last_tick_monotonic = now_monotonic
        return timedelta(seconds=self._interval_s + late_s)

    async def _fire_due(self, schedule: CronSchedule, now: datetime, grace: timedelta) -> list[Run]:
        after = await self._state.last_fire(schedule.name)
        if after is None:
            # Kept durably, so a restart before the first slot still catches up from here.
            after = self._started_at
            await self._state.record_fire(schedule.name, after)
        due = _due_slots(schedule, after, now, grace)
        to_fire = _choose(schedule, due)
        if due.missed:
            logger.info(
                "cron schedule %r missed %s%d slot(s) up to %s; catch_up=%s fires %d of them",
                schedule.name,
                "more than " if due.missed_truncated else "",
                len(due.missed),
                due.missed[0].isoformat(),
                schedule.catch_up,
                len(to_fire) - len(due.on_time),
            )
        runs = [await self._fire(schedule, slot) for slot in to_fire]
        newest = max(due.on_time + due.missed, default=None)
        if newest is not None and (not to_fire or to_fire[-1] < newest):
            await self._state.record_fire(schedule.name, newest)
        return runs

    async def _fire(self, schedule: CronSchedule, slot: datetime) -> Run:
        inputs = {**schedule.inputs, "scheduled_at": slot.isoformat()}
        run = await self._starter.start(
            schedule.workflow,
            inputs,
            trigger=f"cron:{schedule.name}",
            dedupe_key=schedule.dedupe_key(slot),
            priority=schedule.priority,
        )
        await self._state.record_fire(schedule.name, slot)
        return run


def _due_slots(schedule: CronSchedule, after: datetime, now: datetime, grace: timedelta) -> _Due:
    """Walks back from now, so a long outage costs at most ``max_catch_up`` steps, not one per
    slot missed."""
    limit = schedule.max_catch_up if schedule.catch_up == "all" else 1
    late_before = now - grace
    slots = croniter(schedule.cron, (now + _JUST_AFTER).astimezone(ZoneInfo(schedule.timezone)))
    on_time: list[datetime] = []
    missed: list[datetime] = []
    while True:
        slot = slots.get_prev(datetime).astimezone(UTC)
        if slot <= after:
            return _Due(on_time, missed, missed_truncated=False)
        if slot >= late_before:
            on_time.append(slot)
        elif len(missed) < limit:
            missed.append(slot)
        else:
            return _Due(on_time, missed, missed_truncated=True)


def _choose(schedule: CronSchedule, due: _Due) -> list[datetime]:
    """The slots to fire, oldest first."""
    if schedule.catch_up == "all":
        caught_up = due.missed
    elif schedule.catch_up == "one":
        caught_up = due.missed[:1]
    else:
        caught_up = []
    return sorted(caught_up + due.on_time)
