"""Cancellation (client disconnect), its races with admission, live capacity, closing."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from openautoglm.core.clock import ManualClock, SystemClock
from openautoglm.core.errors import DeadlineExceededError, ServiceUnavailableError
from openautoglm.scheduling.model import SchedulerSettings
from openautoglm.scheduling.scheduler import ModelScheduler
from openautoglm.scheduling.slot import Slot


def make_scheduler(capacity: int = 1, **settings: Any) -> tuple[ModelScheduler, ManualClock]:
    clock = ManualClock()
    return ModelScheduler(capacity, clock, SchedulerSettings(**settings)), clock


async def settle(rounds: int = 5) -> None:
    """Let every ready task run: yields only, the clock does not move."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def start(coro: Coroutine[Any, Any, Slot]) -> asyncio.Task[Slot]:
    return asyncio.get_running_loop().create_task(coro)


async def test_cancelling_a_waiter_removes_it_and_frees_nothing() -> None:
    scheduler, _ = make_scheduler(capacity=1)
    held = await scheduler.acquire(scheduler.new_ticket("held", "t", priority=0))
    gone = start(scheduler.acquire(scheduler.new_ticket("gone", "t", priority=0)))
    after = start(scheduler.acquire(scheduler.new_ticket("after", "t", priority=5)))
    await settle()
    assert scheduler.depth == 2
    gone.cancel()
    await asyncio.sleep(0)
    assert gone.cancelled()
    assert scheduler.depth == 1 and scheduler.in_flight == 1 and scheduler.cancelled == 1
    assert not after.done()  # nothing was freed by the cancellation
    held.release()
    await settle()
    assert after.result().ticket.id == "after" and scheduler.in_flight == 1


async def test_a_cancellation_racing_admission_hands_the_slot_back() -> None:
    scheduler, _ = make_scheduler(capacity=1)
    held = await scheduler.acquire(scheduler.new_ticket("held", "t", priority=0))
    racer = start(scheduler.acquire(scheduler.new_ticket("racer", "t", priority=0)))
    next_in_line = start(scheduler.acquire(scheduler.new_ticket("next", "t", priority=1)))
    await settle()
    held.release()  # grants the slot to "racer" ...
    assert scheduler.in_flight == 1 and scheduler.depth == 1
    racer.cancel()  # ... which is cancelled before it could run
    await settle()
    assert racer.cancelled()
    # The racer's slot went back and on to the next in line: one slot, held once.
    assert next_in_line.result().ticket.id == "next"
    assert scheduler.in_flight == 1 and scheduler.depth == 0
    next_in_line.result().release()
    assert scheduler.in_flight == 0
    assert (scheduler.admitted, scheduler.cancelled, scheduler.completed) == (3, 1, 2)


@pytest.mark.parametrize("waiters", [1, 5, 20])
async def test_many_cancellations_racing_releases_leak_no_slot(waiters: int) -> None:
    scheduler, _ = make_scheduler(capacity=2)
    held = [await scheduler.acquire(scheduler.new_ticket(f"h{n}", "t", priority=0)) for n in (0, 1)]
    tasks = [
        start(scheduler.acquire(scheduler.new_ticket(f"w{n}", f"ten{n % 3}", priority=n % 10)))
        for n in range(waiters)
    ]
    await settle()
    for slot in held:
        slot.release()
    for task in tasks:
        task.cancel()  # every waiter goes, some of them just after being granted a slot
    await settle()
    assert all(task.cancelled() for task in tasks)
    assert (scheduler.in_flight, scheduler.depth, scheduler.cancelled) == (0, 0, waiters)
    fresh = [
        await scheduler.acquire(scheduler.new_ticket(f"f{n}", "t", priority=0)) for n in (0, 1)
    ]
    assert scheduler.in_flight == 2 and all(isinstance(slot, Slot) for slot in fresh)


async def test_a_timeout_around_acquire_behaves_like_a_disconnect() -> None:
    scheduler, _ = make_scheduler(capacity=1)
    held = await scheduler.acquire(scheduler.new_ticket("held", "t", priority=0))

    async def impatient() -> None:
        async with asyncio.timeout(0):
            await scheduler.acquire(scheduler.new_ticket("i", "t", priority=0))

    with pytest.raises(TimeoutError):
        await impatient()
    assert scheduler.depth == 0 and scheduler.in_flight == 1
    held.release()
    assert scheduler.in_flight == 0


async def test_growing_capacity_admits_waiters_at_once() -> None:
    scheduler, _ = make_scheduler(capacity=1)
    held = await scheduler.acquire(scheduler.new_ticket("held", "t", priority=0))
    tasks = [
        start(scheduler.acquire(scheduler.new_ticket(f"w{n}", "t", priority=n))) for n in range(4)
    ]
    await settle()
    scheduler.set_capacity(3)
    assert scheduler.in_flight == 3 and scheduler.depth == 2  # granted in the call itself
    await settle()
    assert [task.done() for task in tasks] == [True, True, False, False]
    assert scheduler.capacity == 3 and held.ticket.id == "held"


async def test_shrinking_capacity_lets_in_flight_finish_and_admits_nobody_until_under() -> None:
    scheduler, _ = make_scheduler(capacity=3)
    held = [
        await scheduler.acquire(scheduler.new_ticket(f"h{n}", "t", priority=0)) for n in range(3)
    ]
    waiter = start(scheduler.acquire(scheduler.new_ticket("w", "t", priority=0)))
    await settle()
    scheduler.set_capacity(1)
    assert scheduler.in_flight == 3
    held[0].release()
    held[1].release()
    await settle()
    assert not waiter.done() and scheduler.in_flight == 1
    held[2].release()
    await settle()
    assert waiter.result().ticket.id == "w" and scheduler.in_flight == 1
    with pytest.raises(ValueError, match="capacity"):
        scheduler.set_capacity(-1)


async def test_zero_capacity_queues_and_refuses_deadlines_it_cannot_meet() -> None:
    scheduler, _ = make_scheduler(capacity=0, max_retry_after_s=30.0)
    waiter = start(scheduler.acquire(scheduler.new_ticket("w", "t", priority=0)))
    await settle()
    assert scheduler.depth == 1 and scheduler.estimated_wait_s() == float("inf")
    with pytest.raises(ServiceUnavailableError) as raised:
        await scheduler.acquire(scheduler.new_ticket("d", "t", priority=0, timeout_s=60.0))
    assert raised.value.code == "deadline_unreachable" and raised.value.retry_after_s == 30.0
    scheduler.set_capacity(1)
    await settle()
    assert waiter.result().ticket.id == "w"


async def test_closing_fails_the_waiters_and_refuses_new_tickets() -> None:
    scheduler, _ = make_scheduler(capacity=1)
    held = await scheduler.acquire(scheduler.new_ticket("held", "t", priority=0))
    waiter = start(scheduler.acquire(scheduler.new_ticket("w", "t", priority=0, timeout_s=9.0)))
    await settle()
    scheduler.close()
    await settle()
    error = waiter.exception()
    assert isinstance(error, ServiceUnavailableError) and error.code == "scheduler_closed"
    assert scheduler.depth == 0
    with pytest.raises(ServiceUnavailableError, match="closed"):
        await scheduler.acquire(scheduler.new_ticket("n", "t", priority=0))
    held.release()
    assert scheduler.in_flight == 0


async def test_an_expired_waiter_that_is_also_cancelled_holds_nothing() -> None:
    scheduler, clock = make_scheduler(capacity=1)
    held = await scheduler.acquire(scheduler.new_ticket("held", "t", priority=0))
    waiter = start(scheduler.acquire(scheduler.new_ticket("w", "t", priority=0, timeout_s=5.0)))
    await settle()
    clock.advance(6.0)
    scheduler.expire_overdue()  # sets DeadlineExceededError on its future ...
    waiter.cancel()  # ... and the client goes away in the same instant
    await settle()
    assert waiter.cancelled()  # the cancellation wins; the 504 it never saw is retrieved
    assert scheduler.in_flight == 1 and scheduler.depth == 0
    assert (scheduler.expired, scheduler.cancelled) == (1, 0)
    held.release()
    assert scheduler.in_flight == 0


async def test_the_deadline_timer_expires_tickets_on_the_real_clock() -> None:
    scheduler = ModelScheduler(1, SystemClock(), SchedulerSettings(initial_service_s=0.001))
    held = await scheduler.acquire(scheduler.new_ticket("held", "t", priority=0))
    waiter = scheduler.new_ticket("w", "t", priority=0, timeout_s=0.01)
    with pytest.raises(DeadlineExceededError):
        await asyncio.wait_for(scheduler.acquire(waiter), timeout=5.0)  # no expire_overdue()
    held.release()
    assert scheduler.in_flight == 0 and scheduler.expired == 1
