"""The asyncio scheduler: admission order, refusals in one step, deadlines, estimates."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import DeadlineExceededError, ServiceUnavailableError
from openautoglm.scheduling.model import SchedulerSettings
from openautoglm.scheduling.scheduler import ModelScheduler
from openautoglm.scheduling.slot import Slot
from openautoglm.scheduling.ticket import Ticket


def make_scheduler(capacity: int = 1, **settings: Any) -> tuple[ModelScheduler, ManualClock]:
    clock = ManualClock()
    return ModelScheduler(capacity, clock, SchedulerSettings(**settings)), clock


async def settle(rounds: int = 5) -> None:
    """Let every ready task run: yields only, the clock does not move."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def start(coro: Coroutine[Any, Any, Slot]) -> asyncio.Task[Slot]:
    return asyncio.get_running_loop().create_task(coro)


async def hold(scheduler: ModelScheduler, count: int, tenant: str = "busy") -> list[Slot]:
    return [
        await scheduler.acquire(scheduler.new_ticket(f"held-{tenant}-{n}", tenant, priority=5))
        for n in range(count)
    ]


async def test_a_free_slot_is_granted_at_once_and_a_release_admits_the_next() -> None:
    scheduler, clock = make_scheduler(capacity=2)
    first, second = await hold(scheduler, 2)
    assert scheduler.in_flight == 2 and scheduler.depth == 0
    clock.advance(1.0)
    waiter = start(scheduler.acquire(scheduler.new_ticket("w", "t", priority=3)))
    await settle()
    assert not waiter.done() and scheduler.depth == 1
    clock.advance(2.0)
    first.release()
    await settle()
    slot = waiter.result()
    assert slot.ticket.id == "w" and slot.waited_s == 2.0
    assert (scheduler.in_flight, scheduler.depth, scheduler.admitted) == (2, 0, 3)
    second.release()
    slot.release()
    assert scheduler.in_flight == 0 and scheduler.completed == 3


async def test_waiters_are_admitted_by_priority_then_deadline() -> None:
    scheduler, _ = make_scheduler(capacity=1)
    (held,) = await hold(scheduler, 1)
    specs = [("p5", 5, None), ("p0-late", 0, 90.0), ("p9", 9, None), ("p0-soon", 0, 30.0)]
    tasks = [
        start(scheduler.acquire(scheduler.new_ticket(name, "t", priority=p, timeout_s=timeout)))
        for name, p, timeout in specs
    ]
    await settle()
    assert scheduler.depth == 4
    order, slot = [], held
    for _ in specs:
        slot.release()
        await settle()
        (slot,) = [task.result() for task in tasks if task.done() and not task.result().released]
        order.append(slot.ticket.id)
    assert order == ["p0-soon", "p0-late", "p5", "p9"]


async def test_a_full_queue_refuses_in_one_step_with_503_queue_full() -> None:
    scheduler, _ = make_scheduler(capacity=1, max_queue=2, initial_service_s=2.0)
    await hold(scheduler, 1)
    queued = [
        start(scheduler.acquire(scheduler.new_ticket(f"q{n}", "t", priority=4))) for n in (0, 1)
    ]
    await settle()
    refused = start(scheduler.acquire(scheduler.new_ticket("late", "t", priority=0)))
    await asyncio.sleep(0)  # one step: it never waits
    assert refused.done()
    error = refused.exception()
    assert isinstance(error, ServiceUnavailableError)
    assert (error.status, error.code) == (503, "queue_full")
    assert error.retry_after_s == 6.0  # the 2 queued + itself, 2 s each, 1 slot
    assert scheduler.rejected["queue_full"] == 1 and scheduler.depth == 2
    assert not any(task.done() for task in queued)
    for task in queued:
        task.cancel()
    await settle()


async def test_an_unreachable_start_deadline_is_refused_in_one_step_with_503() -> None:
    scheduler, clock = make_scheduler(
        capacity=2, initial_service_s=4.0, deadline_is_completion=False
    )
    await hold(scheduler, 2)  # slots free every 4 s / 2 slots = 2 s

    def ask(name: str, priority: int, timeout_s: float) -> asyncio.Task[Slot]:
        ticket = scheduler.new_ticket(name, "A", priority=priority, timeout_s=timeout_s)
        return start(scheduler.acquire(ticket))

    relaxed = [ask(f"a{n}", 4, 100.0) for n in range(3)]
    await settle()
    urgent = ask("urgent", 4, 2.5)  # EDF puts it first in A's flow: 1 slot, 2 s
    tight = ask("tight", 4, 3.0)  # behind "urgent" only: 2 slots, 4 s > 3 s
    low = ask("low", 9, 3.0)  # behind all 4 of class 4: 5 slots, 10 s > 3 s
    medium = ask("medium", 4, 50.0)  # behind "urgent" only: 4 s
    await asyncio.sleep(0)  # one step: refusals never wait
    assert tight.done() and low.done()
    assert not any(task.done() for task in [*relaxed, urgent, medium])
    for task, retry_after_s in ((tight, 2.0), (low, 7.0)):
        error = task.exception()
        assert isinstance(error, ServiceUnavailableError)
        assert (error.status, error.code) == (503, "deadline_unreachable")
        # 4 - 3 = 1 s short, but never under the 2 s between releases; 10 - 3 = 7 s.
        assert error.retry_after_s == retry_after_s
    assert scheduler.rejected["deadline_unreachable"] == 2 and scheduler.depth == 5
    probe = Ticket("probe", "A", 4, arrived_at=clock.monotonic())
    assert scheduler.estimated_wait_s(probe) == (5 + 1) * 4.0 / 2
    assert scheduler.estimated_wait_s() == (5 + 1) * 4.0 / 2
    for task in [*relaxed, urgent, medium]:
        task.cancel()
    await settle()
    assert scheduler.depth == 0 and scheduler.cancelled == 5


async def test_a_completion_deadline_leaves_room_for_the_likely_service_time() -> None:
    scheduler, clock = make_scheduler(capacity=1, initial_service_s=1.0, service_ewma_alpha=0.5)
    for held_s in (2.0, 4.0):  # mean 2 -> 3; deviation 1 -> 0.5 * 1 + 0.5 * |4 - 2| = 1.5
        (slot,) = await hold(scheduler, 1)
        clock.advance(held_s)
        slot.release()
    assert (scheduler.service_time_s, scheduler.likely_service_s) == (3.0, 4.5)
    await hold(scheduler, 1)
    # Next in line: a 3 s wait for the slot, then 4.5 s of likely service.
    with pytest.raises(ServiceUnavailableError) as raised:
        await scheduler.acquire(scheduler.new_ticket("short", "t", priority=0, timeout_s=7.0))
    assert raised.value.code == "deadline_unreachable"
    assert raised.value.retry_after_s == 3.0  # misses by 0.5 s; a release comes every 3 s
    fits = start(scheduler.acquire(scheduler.new_ticket("fits", "t", priority=0, timeout_s=7.5)))
    await settle()
    assert not fits.done() and scheduler.depth == 1


async def test_a_ticket_that_can_no_longer_finish_is_answered_504_not_started() -> None:
    scheduler, clock = make_scheduler(capacity=1, initial_service_s=2.0)
    (held,) = await hold(scheduler, 1)
    doomed = start(scheduler.acquire(scheduler.new_ticket("d", "t", priority=0, timeout_s=6.0)))
    hopeful = start(scheduler.acquire(scheduler.new_ticket("h", "t", priority=1, timeout_s=30.0)))
    await settle()
    clock.advance(3.9)
    assert scheduler.expire_overdue() == 0
    clock.advance(0.1)  # 4 s + 2 s of likely service reaches its 6 s deadline: it cannot make it
    assert scheduler.expire_overdue() == 1
    await settle()
    error = doomed.exception()
    assert isinstance(error, DeadlineExceededError) and "could not finish" in str(error)
    held.release(ok=False)
    await settle()
    assert hopeful.result().ticket.id == "h"  # the slot goes to one that can make it
    assert (scheduler.expired, scheduler.in_flight, scheduler.depth) == (1, 1, 0)


async def test_a_deadline_already_past_is_refused_with_504() -> None:
    scheduler, clock = make_scheduler(capacity=4)
    ticket = scheduler.new_ticket("old", "t", priority=0, timeout_s=1.0)
    clock.advance(1.0)
    with pytest.raises(DeadlineExceededError) as raised:
        await scheduler.acquire(ticket)
    assert (raised.value.status, raised.value.code) == (504, "deadline_exceeded")
    assert scheduler.in_flight == 0 and scheduler.rejected["deadline_exceeded"] == 1


async def test_a_queued_ticket_past_its_deadline_gets_504_and_leaves_the_queue() -> None:
    scheduler, clock = make_scheduler(
        capacity=1, initial_service_s=1.0, deadline_is_completion=False
    )
    (held,) = await hold(scheduler, 1)
    doomed = start(scheduler.acquire(scheduler.new_ticket("d", "t", priority=0, timeout_s=5.0)))
    patient = start(scheduler.acquire(scheduler.new_ticket("p", "t", priority=9)))
    await settle()
    assert scheduler.depth == 2
    clock.advance(4.9)
    assert scheduler.expire_overdue() == 0
    clock.advance(0.1)
    assert scheduler.expire_overdue() == 1
    await settle()
    error = doomed.exception()
    assert isinstance(error, DeadlineExceededError) and error.status == 504
    assert scheduler.depth == 1 and scheduler.expired == 1 and scheduler.in_flight == 1
    held.release()  # the slot goes to the next live ticket, not to the expired one
    await settle()
    assert patient.result().ticket.id == "p"


async def test_a_release_also_expires_overdue_tickets_before_admitting() -> None:
    scheduler, clock = make_scheduler(capacity=1)
    (held,) = await hold(scheduler, 1)
    doomed = start(scheduler.acquire(scheduler.new_ticket("d", "t", priority=0, timeout_s=5.0)))
    await settle()
    clock.advance(6.0)
    held.release()
    await settle()
    assert isinstance(doomed.exception(), DeadlineExceededError)
    assert scheduler.in_flight == 0 and scheduler.admitted == 1


async def test_service_time_is_a_moving_average_of_successful_holds() -> None:
    scheduler, clock = make_scheduler(capacity=1, initial_service_s=10.0, service_ewma_alpha=0.5)
    for held_s, ok, expected in ((2.0, True, 2.0), (4.0, True, 3.0), (100.0, False, 3.0)):
        (slot,) = await hold(scheduler, 1)
        clock.advance(held_s)
        slot.release(ok=ok)
        assert scheduler.service_time_s == expected
    assert (scheduler.completed, scheduler.failed) == (2, 1)


async def test_slots_release_once_and_work_as_context_managers() -> None:
    scheduler, _ = make_scheduler(capacity=1)
    (slot,) = await hold(scheduler, 1)
    slot.release()
    slot.release()
    assert scheduler.in_flight == 0 and scheduler.completed == 1
    slot = await scheduler.acquire(scheduler.new_ticket("c", "t", priority=1))
    with pytest.raises(RuntimeError), slot:
        assert scheduler.in_flight == 1
        raise RuntimeError("the backend failed")
    assert scheduler.in_flight == 0 and scheduler.failed == 1


async def test_waits_are_recorded_per_priority() -> None:
    scheduler, clock = make_scheduler(capacity=1)
    (held,) = await hold(scheduler, 1)
    tasks = [
        start(scheduler.acquire(scheduler.new_ticket(f"w{n}", "t", priority=2))) for n in range(3)
    ]
    await settle()
    slot = held
    for _ in tasks:
        clock.advance(2.0)
        slot.release()
        await settle()
        slot = next(t.result() for t in tasks if t.done() and not t.result().released)
    slot.release()
    waits = scheduler.stats().waits
    assert (waits[2].count, waits[2].max_s, waits[2].p50_s) == (3, 6.0, 4.0)
    assert waits[2].mean_s == pytest.approx(4.0)
    assert waits[5].count == 1 and waits[5].max_s == 0.0  # the held one
    assert waits[0].count == 0


async def test_desired_capacity_covers_in_flight_plus_draining_the_queue() -> None:
    scheduler, _ = make_scheduler(capacity=8, initial_service_s=1.0)
    assert scheduler.desired_capacity(target_wait_s=10.0) == 0  # idle
    await hold(scheduler, 8)
    assert scheduler.desired_capacity(target_wait_s=10.0) == 8  # busy, nobody waiting
    tasks = [
        start(scheduler.acquire(scheduler.new_ticket(f"q{n}", "t", priority=4))) for n in range(100)
    ]
    await settle()
    # 100 queued x 1 s of work: 10 more slots drain it in 10 s, 2 more in 50 s.
    assert scheduler.desired_capacity(target_wait_s=10.0) == 18
    assert scheduler.desired_capacity(target_wait_s=50.0) == 10
    assert scheduler.desired_capacity(target_wait_s=1000.0) == 9
    with pytest.raises(ValueError, match="target_wait_s"):
        scheduler.desired_capacity(target_wait_s=0.0)
    stats = scheduler.stats()
    assert (stats.depth, stats.in_flight, stats.capacity) == (100, 8, 8)
    assert stats.estimated_wait_s == (100 + 1) * 1.0 / 8
    for task in tasks:
        task.cancel()
    await settle()
