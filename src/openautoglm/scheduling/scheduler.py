"""Admission and slots for one model on asyncio: who may run now, who waits, who is refused.

A :class:`ModelScheduler` guards ``capacity`` concurrent slots (the model's instances' combined
concurrency) with a bounded :class:`.queue.SchedulingQueue`. ``acquire(ticket)`` returns a
:class:`Slot` at once when a slot is free and nobody waits, otherwise queues the ticket and waits
until it is next in order and a slot frees up.

Deadlines are when the *response* is due (``deadline_is_completion``, the default): the scheduler
counts a likely service time (the moving mean plus mean deviation of observed ones, see
:class:`.estimate.ServiceTimeEstimate`) on top of the wait. With ``deadline_is_completion=False``
a deadline is the latest *start* and that term is zero. Refusals are decided before waiting, in
one step:

* the queue holds ``max_queue`` tickets: 503 ``queue_full``, ``retry_after_s`` = the estimated
  time for the present queue to drain;
* ``now + estimated wait (+ likely service) > deadline``: 503 ``deadline_unreachable``,
  ``retry_after_s`` = by how much it would miss. 503 and not 429: the model is saturated, the
  caller did nothing over its limits, and it matches ``queue_full``;
* the deadline has already passed: 504 ``deadline_exceeded``.

A queued ticket that can no longer make its deadline (``now + likely service >= deadline``; with
start deadlines, when it passes) is taken out and its waiter gets ``DeadlineExceededError`` (504):
starting it would hold a slot for an answer that comes too late. Expiry is
checked on every acquire, release and capacity change, and by a loop timer armed for the earliest
queued deadline; the timer only wakes the scheduler, the decision reads the injected clock, so
tests drive it with ``ManualClock`` and :meth:`ModelScheduler.expire_overdue`. The free-slot fast
path admits without any estimate: with nobody waiting, a request always gets its chance.

Invariants: ``in_flight`` counts slots handed out and not yet released (each :class:`Slot`
releases once, later calls do nothing); the queue is empty or ``in_flight >= capacity`` after
every public call; a cancelled waiter leaves the queue at once, and one cancelled just as it was
admitted gives its slot back, so cancellation never leaks or double-frees a slot.
"""

from __future__ import annotations

import asyncio
import math

from openautoglm.core.clock import Clock
from openautoglm.core.errors import DeadlineExceededError, ServiceUnavailableError
from openautoglm.scheduling.estimate import (
    ServiceTimeEstimate,
    WaitRecord,
    desired_capacity,
    estimate_wait_s,
)
from openautoglm.scheduling.model import RejectReason, SchedulerSettings, SchedulerStats
from openautoglm.scheduling.queue import SchedulingQueue
from openautoglm.scheduling.slot import Slot
from openautoglm.scheduling.ticket import NUM_PRIORITIES, Ticket

__all__ = ["ModelScheduler", "RejectReason", "SchedulerSettings", "SchedulerStats", "Slot"]


class ModelScheduler:
    """Slots, queue and admission for one model (see the module docstring)."""

    def __init__(
        self, capacity: int, clock: Clock, settings: SchedulerSettings | None = None
    ) -> None:
        self.settings = settings or SchedulerSettings()
        self._clock = clock
        self._capacity = _check_capacity(capacity)
        self._in_flight = 0
        self._queue = SchedulingQueue(self.settings.queue_settings())
        self._waiters: dict[str, asyncio.Future[Slot]] = {}
        self._service = ServiceTimeEstimate(
            self.settings.initial_service_s, self.settings.service_ewma_alpha
        )
        self._waits = {p: WaitRecord(self.settings.wait_window) for p in range(NUM_PRIORITIES)}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._closed = False
        self.admitted = 0
        self.completed = 0
        self.failed = 0
        self.expired = 0
        self.cancelled = 0
        self.rejected: dict[str, int] = dict.fromkeys(RejectReason, 0)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def service_time_s(self) -> float:
        """The moving average of how long a slot is held by a request that succeeded."""
        return self._service.value_s

    @property
    def likely_service_s(self) -> float:
        """The moving average plus the mean deviation: what a deadline must leave room for."""
        return self._service.likely_s

    def new_ticket(
        self,
        ticket_id: str,
        tenant_id: str,
        *,
        priority: int,
        timeout_s: float | None = None,
        cost: float = 1.0,
    ) -> Ticket:
        """A ticket arriving now, with a deadline ``timeout_s`` from now (``None``: none)."""
        now = self._clock.monotonic()
        deadline = None if timeout_s is None else now + timeout_s
        return Ticket(ticket_id, tenant_id, priority, now, deadline, cost)

    async def acquire(self, ticket: Ticket) -> Slot:
        """Wait until ``ticket`` may run and return its slot, or refuse it at once.

        Raises ``ServiceUnavailableError`` (``queue_full``, ``deadline_unreachable``, or
        ``scheduler_closed``) or ``DeadlineExceededError`` without waiting; a queued ticket whose
        deadline passes raises ``DeadlineExceededError``. Cancelling the caller removes the
        ticket from the queue (and hands back a slot granted in the same instant).
        """
        now = self._clock.monotonic()
        self._expire(now)
        self._admit_or_refuse(ticket, now)
        if self._in_flight < self._capacity and not self._queue:
            return self._grant(ticket, now)
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._queue.push(ticket)
        self._waiters[ticket.id] = future
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(ticket, future)
            raise

    def set_capacity(self, capacity: int) -> None:
        """Change the number of slots now; growing admits waiters at once, shrinking lets the
        requests in flight finish and admits nobody until ``in_flight`` is under the new size."""
        self._capacity = _check_capacity(capacity)
        self._dispatch()

    def expire_overdue(self) -> int:
        """Fail the queued tickets that can no longer make their deadline; how many there were."""
        expired = self._expire(self._clock.monotonic())
        self._arm_timer()
        return expired

    def estimated_wait_s(self, ticket: Ticket | None = None) -> float:
        """Expected queue wait for ``ticket`` if it arrived now (``None``: one at the back)."""
        now = self._clock.monotonic()
        ahead = len(self._queue) if ticket is None else self._queue.estimate_ahead(ticket, now)
        free = self._capacity - self._in_flight
        return estimate_wait_s(ahead, free, self._capacity, self._service.value_s)

    def desired_capacity(self, target_wait_s: float) -> int:
        """Slots (or replicas' worth of slots) that would bring the queue wait to the target."""
        return desired_capacity(
            len(self._queue), self._in_flight, self._service.value_s, target_wait_s
        )

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            capacity=self._capacity,
            in_flight=self._in_flight,
            depth=len(self._queue),
            service_s=self._service.value_s,
            likely_service_s=self._service.likely_s,
            estimated_wait_s=self.estimated_wait_s(),
            admitted=self.admitted,
            completed=self.completed,
            failed=self.failed,
            rejected=dict(self.rejected),
            expired=self.expired,
            cancelled=self.cancelled,
            waits={priority: record.summary() for priority, record in self._waits.items()},
        )

    def close(self) -> None:
        """Refuse new tickets and fail the queued ones (the model is going away)."""
        self._closed = True
        self._cancel_timer()
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(_closed_error())
        self._waiters.clear()
        self._queue = SchedulingQueue(self.settings.queue_settings())

    def _admit_or_refuse(self, ticket: Ticket, now: float) -> None:
        if self._closed:
            raise _closed_error()
        if ticket.deadline is not None and ticket.deadline <= now:
            self.rejected[RejectReason.DEADLINE_PASSED] += 1
            raise DeadlineExceededError(f"request {ticket.id} arrived after its deadline")
        if self._in_flight < self._capacity and not self._queue:
            return
        free = self._capacity - self._in_flight
        if len(self._queue) >= self.settings.max_queue:
            self.rejected[RejectReason.QUEUE_FULL] += 1
            drain_s = estimate_wait_s(len(self._queue), free, self._capacity, self.service_time_s)
            raise ServiceUnavailableError(
                f"the queue for this model is full ({len(self._queue)} waiting)",
                code=RejectReason.QUEUE_FULL,
                retry_after_s=self._retry_after(drain_s),
            )
        if ticket.deadline is None:
            return
        ahead = self._queue.estimate_ahead(ticket, now)
        wait_s = estimate_wait_s(ahead, free, self._capacity, self.service_time_s)
        finish_s = wait_s + self._service_to_finish_s()
        if now + finish_s > ticket.deadline:
            self.rejected[RejectReason.DEADLINE_UNREACHABLE] += 1
            raise ServiceUnavailableError(
                f"estimated queue wait {wait_s:.3g}s would miss the request's deadline",
                code=RejectReason.DEADLINE_UNREACHABLE,
                retry_after_s=self._retry_after(finish_s - (ticket.deadline - now)),
            )

    def _service_to_finish_s(self) -> float:
        """What must fit between a ticket's start and its deadline."""
        return self._service.likely_s if self.settings.deadline_is_completion else 0.0

    def _retry_after(self, seconds: float) -> float:
        """At least the mean time between slot releases, at most ``max_retry_after_s``."""
        between_releases_s = self._service.value_s / max(1, self._capacity)
        return min(self.settings.max_retry_after_s, max(seconds, between_releases_s))

    def _grant(self, ticket: Ticket, now: float) -> Slot:
        self._in_flight += 1
        self.admitted += 1
        waited_s = max(0.0, now - ticket.arrived_at)
        self._waits[ticket.priority].observe(waited_s)
        return Slot(ticket, now, waited_s, self._release)

    def _dispatch(self) -> None:
        """Expire overdue tickets, then hand free slots to the next tickets in order."""
        now = self._clock.monotonic()
        self._expire(now)
        while self._in_flight < self._capacity:
            ticket = self._queue.pop(now)
            if ticket is None:
                break
            future = self._waiters.pop(ticket.id)
            if future.done():  # its task was cancelled and has not run its cleanup yet
                continue
            future.set_result(self._grant(ticket, now))
        self._arm_timer()

    def _expire(self, now: float) -> int:
        """Fail the queued tickets that can no longer make their deadline.

        Taken out by the queue before they reach the front, so a doomed ticket never uses up
        its tenant's fair-share turn.
        """
        expired = self._queue.pop_expired(now + self._service_to_finish_s())
        for ticket in expired:
            future = self._waiters.pop(ticket.id)
            if future.done():
                continue
            self.expired += 1
            what = "reached its deadline" if ticket.deadline_key <= now else "could not finish"
            waited_s = now - ticket.arrived_at
            future.set_exception(
                DeadlineExceededError(f"request {ticket.id} {what} after {waited_s:.3g}s queued")
            )
        return len(expired)

    def _abandon(self, ticket: Ticket, future: asyncio.Future[Slot]) -> None:
        """The waiter was cancelled: leave the queue, or give back a slot granted meanwhile."""
        if future.done() and not future.cancelled():
            if future.exception() is None:  # admitted in the same instant: give the slot back
                self.cancelled += 1
                future.result().release(ok=False)
            return
        self.cancelled += 1
        future.cancel()
        if self._waiters.get(ticket.id) is future:
            del self._waiters[ticket.id]
            self._queue.remove(ticket.id)
            self._arm_timer()

    def _release(self, slot: Slot, ok: bool) -> None:
        self._in_flight -= 1
        if ok:
            self.completed += 1
            self._service.observe(self._clock.monotonic() - slot.admitted_at)
        else:
            self.failed += 1
        self._dispatch()

    def _arm_timer(self) -> None:
        deadline = self._queue.next_deadline()
        if deadline is None:
            self._cancel_timer()
            return
        deadline -= self._service_to_finish_s()
        if self._timer is not None and self._timer_at <= deadline:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop: the next call on the loop arms it
            return
        self._cancel_timer()
        delay_s = max(0.0, deadline - self._clock.monotonic())
        self._timer = loop.call_later(delay_s, self._on_timer)
        self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._dispatch()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = math.inf


def _check_capacity(capacity: int) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"capacity must be a non-negative integer, got {capacity!r}")
    return capacity


def _closed_error() -> ServiceUnavailableError:
    return ServiceUnavailableError("this model's scheduler is closed", code="scheduler_closed")
