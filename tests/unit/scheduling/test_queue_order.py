"""The queue's order: priority class, then deadline, then arrival; aging; expiry; scale."""

from __future__ import annotations

import random
import time

import pytest

from openautoglm.scheduling.queue import QueueSettings, SchedulingQueue
from openautoglm.scheduling.ticket import Ticket

NO_AGING = QueueSettings(aging_s=None)


def drain(queue: SchedulingQueue, now: float = 0.0) -> list[str]:
    order = []
    while (ticket := queue.pop(now)) is not None:
        order.append(ticket.id)
    return order


def test_priority_class_first_then_deadline_then_arrival() -> None:
    queue = SchedulingQueue(NO_AGING)
    tickets = [
        Ticket("p5-late", "t", 5, arrived_at=0.0, deadline=90.0),
        Ticket("p5-none-first", "t", 5, arrived_at=1.0),
        Ticket("p0-none", "t", 0, arrived_at=2.0),
        Ticket("p5-soon", "t", 5, arrived_at=3.0, deadline=20.0),
        Ticket("p9-soonest", "t", 9, arrived_at=4.0, deadline=5.0),
        Ticket("p0-deadline", "t", 0, arrived_at=5.0, deadline=80.0),
        Ticket("p5-none-second", "t", 5, arrived_at=6.0),
        Ticket("p5-soon-tie", "t", 5, arrived_at=7.0, deadline=20.0),
    ]
    for ticket in tickets:
        queue.push(ticket)
    assert len(queue) == 8
    assert drain(queue) == [
        "p0-deadline",
        "p0-none",
        "p5-soon",
        "p5-soon-tie",
        "p5-late",
        "p5-none-first",
        "p5-none-second",
        "p9-soonest",
    ]
    assert len(queue) == 0 and queue.pop(0.0) is None


def test_one_ticket_per_tenant_is_plain_edf_across_tenants() -> None:
    queue = SchedulingQueue(NO_AGING)
    queue.push(Ticket("a", "tenant-a", 3, arrived_at=0.0, deadline=30.0))
    queue.push(Ticket("b", "tenant-b", 3, arrived_at=1.0, deadline=10.0))
    queue.push(Ticket("c", "tenant-c", 3, arrived_at=2.0))
    queue.push(Ticket("d", "tenant-d", 3, arrived_at=3.0, deadline=20.0))
    assert drain(queue) == ["b", "d", "a", "c"]


def test_aging_lets_priority_9_overtake_a_steady_priority_0_stream() -> None:
    queue = SchedulingQueue(QueueSettings(aging_s=5.0))
    queue.push(Ticket("low", "t", 9, arrived_at=0.0))
    ran_at = None
    for step in range(100):
        now = float(step)
        for n in range(2):  # the stream always has a fresh priority-0 ticket waiting
            queue.push(Ticket(f"hi-{step}-{n}", "t", 0, arrived_at=now))
        assert queue.effective_priority(Ticket("x", "t", 9, arrived_at=0.0), now) == max(
            0, 9 - step // 5
        )
        if queue.pop(now).id == "low":  # type: ignore[union-attr]
            ran_at = now
            break
    # 9 classes x 5 s: it competes as priority 0 at t=45 and, having arrived first, runs then.
    assert ran_at == 45.0


def test_without_aging_priority_9_starves_behind_the_stream() -> None:
    queue = SchedulingQueue(NO_AGING)
    queue.push(Ticket("low", "t", 9, arrived_at=0.0))
    for step in range(200):
        queue.push(Ticket(f"hi-{step}", "t", 0, arrived_at=float(step)))
        assert queue.pop(float(step)).id != "low"  # type: ignore[union-attr]
    assert "low" in queue


def test_tickets_with_a_deadline_do_not_age_by_default() -> None:
    queue = SchedulingQueue(QueueSettings(aging_s=1.0))
    with_deadline = Ticket("d", "t", 9, arrived_at=0.0, deadline=1000.0)
    without = Ticket("n", "t", 9, arrived_at=0.0)
    queue.push(with_deadline)
    queue.push(without)
    assert queue.effective_priority(with_deadline, 100.0) == 9
    assert queue.effective_priority(without, 100.0) == 0
    assert queue.depth_by_class(100.0) == (1, 0, 0, 0, 0, 0, 0, 0, 0, 1)
    queue.push(Ticket("fresh", "t", 4, arrived_at=100.0, deadline=1000.0))
    assert drain(queue, now=100.0) == ["n", "fresh", "d"]


def test_an_aged_ticket_competes_by_deadline_in_its_new_class() -> None:
    queue = SchedulingQueue(QueueSettings(aging_s=10.0, age_tickets_with_deadline=True))
    queue.push(Ticket("old-p2", "t", 2, arrived_at=0.0, deadline=100.0))
    queue.push(Ticket("new-p1-late", "t", 1, arrived_at=15.0, deadline=500.0))
    queue.push(Ticket("new-p1-soon", "t", 1, arrived_at=15.0, deadline=50.0))
    # At t=15 old-p2 has waited 15 s: one class up, into class 1, where deadlines decide.
    assert queue.depth_by_class(15.0)[:3] == (0, 3, 0)
    assert drain(queue, now=15.0) == ["new-p1-soon", "old-p2", "new-p1-late"]


def test_remove_takes_a_ticket_out_wherever_it_is() -> None:
    queue = SchedulingQueue(QueueSettings(aging_s=1.0))
    for n in range(5):
        queue.push(Ticket(f"t{n}", "t", 4, arrived_at=float(n)))
    assert queue.remove("t2") and not queue.remove("t2") and not queue.remove("nope")
    assert queue.pop(3.5).id == "t0"  # type: ignore[union-attr]  # t0..t3 promoted, t2 gone
    assert queue.remove("t4")
    assert drain(queue, now=3.5) == ["t1", "t3"]


def test_a_ticket_id_is_queued_once() -> None:
    queue = SchedulingQueue()
    queue.push(Ticket("same", "t", 1, arrived_at=0.0))
    with pytest.raises(ValueError, match="already queued"):
        queue.push(Ticket("same", "u", 2, arrived_at=1.0))
    queue.pop(0.0)
    queue.push(Ticket("same", "u", 2, arrived_at=1.0))
    assert len(queue) == 1


def test_pop_expired_takes_out_overdue_tickets_only() -> None:
    queue = SchedulingQueue(NO_AGING)
    queue.push(Ticket("a", "t", 5, arrived_at=0.0, deadline=10.0))
    queue.push(Ticket("b", "t", 5, arrived_at=0.0, deadline=20.0))
    queue.push(Ticket("c", "t", 5, arrived_at=0.0))
    queue.push(Ticket("d", "t", 5, arrived_at=0.0, deadline=5.0))
    queue.remove("d")
    assert queue.next_deadline() == 10.0
    assert queue.pop_expired(9.9) == []
    assert [t.id for t in queue.pop_expired(10.0)] == ["a"]
    assert queue.next_deadline() == 20.0
    assert queue.pop(10.0).id == "b"  # type: ignore[union-attr]
    assert queue.next_deadline() is None and queue.pop_expired(1e9) == []
    assert drain(queue) == ["c"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"priority": 10}, "priority must be 0..9"),
        ({"priority": -1}, "priority must be 0..9"),
        ({"priority": 1.0}, "priority must be an integer"),
        ({"cost": 0.0}, "cost must be a positive number"),
        ({"arrived_at": float("nan")}, "arrived_at must be a finite time"),
    ],
)
def test_invalid_tickets_are_refused(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"id": "x", "tenant_id": "t", "priority": 1, "arrived_at": 0.0}
    with pytest.raises(ValueError, match=message):
        Ticket(**(values | fields))  # type: ignore[arg-type]


def test_settings_refuse_bad_aging_and_weights() -> None:
    with pytest.raises(ValueError, match="aging_s"):
        QueueSettings(aging_s=0)
    with pytest.raises(ValueError, match="'a' must be positive"):
        QueueSettings(tenant_weights={"a": 0.0})


def test_twenty_thousand_tickets_keep_order_and_stay_fast() -> None:
    rng = random.Random(7)
    queue = SchedulingQueue(NO_AGING)
    count = 20_000
    started = time.perf_counter()
    for n in range(count):
        deadline = n * 0.01 + rng.uniform(1, 100) if rng.random() < 0.5 else None
        queue.push(Ticket(f"{n}", f"ten{n % 3}", rng.randrange(10), n * 0.01, deadline))
    for n in range(0, count, 4):
        assert queue.remove(f"{n}")
    assert len(queue) == count * 3 // 4
    popped = []
    while (ticket := queue.pop(300.0)) is not None:
        popped.append(ticket)
    elapsed_s = time.perf_counter() - started
    assert len(popped) == count * 3 // 4
    assert [t.priority for t in popped] == sorted(t.priority for t in popped)
    for tenant in ("ten0", "ten1", "ten2"):  # EDF, then arrival, inside each tenant and class
        for priority in range(10):
            mine = [t for t in popped if t.tenant_id == tenant and t.priority == priority]
            keys = [(t.deadline_key, t.arrived_at) for t in mine]
            assert keys == sorted(keys)
    assert elapsed_s < 5.0  # about 0.3 s; an O(n) pop would take minutes


@pytest.mark.parametrize(("aging_s", "low_served"), [(0.5, True), (None, False)])
def test_aging_under_overload_with_twenty_thousand_tickets(
    aging_s: float | None, low_served: bool
) -> None:
    """Two arrivals (priorities 0..9 in turn) and one pop per ms for 10 s: overloaded 2:1."""
    queue = SchedulingQueue(QueueSettings(aging_s=aging_s))
    started = time.perf_counter()
    served_during_overload = []
    for step in range(10_000):
        now = step * 0.001
        for n in (2 * step, 2 * step + 1):
            queue.push(Ticket(f"{n}", f"ten{n % 7}", n % 10, now))
        served_during_overload.append((now, queue.pop(now)))
    assert len(queue) == 10_000
    drained = drain(queue, now=10.0)
    assert len(drained) == 10_000
    assert time.perf_counter() - started < 5.0
    nines = [t for _, t in served_during_overload if t is not None and t.priority == 9]
    # Better classes alone arrive at 1.8/ms, faster than the 1/ms served: without aging no
    # priority-9 ticket runs while the overload lasts. With it, every priority gets about its
    # share (half of its arrivals) and nobody waits much longer than 9 classes x 0.5 s.
    assert bool(nines) is low_served
    if low_served:
        waits = [(t.priority, at - t.arrived_at) for at, t in served_during_overload if t]
        for priority in range(10):
            mine = [wait for p, wait in waits if p == priority]
            assert len(mine) >= 900
            assert max(mine) <= 9 * 0.5 + 1.0
