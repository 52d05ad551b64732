"""Weighted fair share between tenants inside a class, and how it meets EDF."""

from __future__ import annotations

import pytest

from openautoglm.scheduling.queue import QueueSettings, SchedulingQueue
from openautoglm.scheduling.ticket import Ticket

NO_AGING = QueueSettings(aging_s=None)


def pop_all(queue: SchedulingQueue, now: float = 0.0) -> list[Ticket]:
    popped = []
    while (ticket := queue.pop(now)) is not None:
        popped.append(ticket)
    return popped


def test_a_small_tenant_is_interleaved_with_a_big_burst_not_queued_behind_it() -> None:
    queue = SchedulingQueue(NO_AGING)
    for n in range(1000):
        queue.push(Ticket(f"a{n}", "A", 4, arrived_at=n * 0.001))
    for n in range(10):
        queue.push(Ticket(f"b{n}", "B", 4, arrived_at=1.0 + n * 0.001))
    order = [t.id for t in pop_all(queue)]
    positions = [i for i, ticket_id in enumerate(order) if ticket_id.startswith("b")]
    assert positions == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    assert [order[i] for i in positions] == [f"b{n}" for n in range(10)]
    assert [i for i in order if i.startswith("a")] == [f"a{n}" for n in range(1000)]


def test_a_tenant_arriving_mid_burst_gets_its_turn_at_once() -> None:
    queue = SchedulingQueue(NO_AGING)
    for n in range(1000):
        queue.push(Ticket(f"a{n}", "A", 4, arrived_at=0.0))
    head = [queue.pop(1.0) for _ in range(500)]
    assert all(t is not None and t.tenant_id == "A" for t in head)
    queue.push(Ticket("b0", "B", 4, arrived_at=2.0))
    queue.push(Ticket("b1", "B", 4, arrived_at=2.0))
    # B starts at the class's virtual time, not behind A's 500 remaining tickets, and A's
    # 500 earlier turns give B no extra credit either: they alternate.
    order = [t.id for t in pop_all(queue)][:5]
    assert order == ["b0", "a500", "b1", "a501", "a502"]


@pytest.mark.parametrize(("weight_a", "expected_a"), [(2.0, 200), (3.0, 225), (1.0, 150)])
def test_weights_share_the_class_in_proportion(weight_a: float, expected_a: int) -> None:
    queue = SchedulingQueue(QueueSettings(aging_s=None, tenant_weights={"A": weight_a}))
    for n in range(300):
        queue.push(Ticket(f"a{n}", "A", 2, arrived_at=0.0))
        queue.push(Ticket(f"b{n}", "B", 2, arrived_at=0.0))
    first = pop_all(queue)[:300]
    assert sum(t.tenant_id == "A" for t in first) == expected_a


def test_cost_uses_up_a_tenant_turn_in_proportion() -> None:
    queue = SchedulingQueue(NO_AGING)
    for n in range(100):
        queue.push(Ticket(f"a{n}", "A", 2, arrived_at=0.0, cost=4.0))
        queue.push(Ticket(f"b{n}", "B", 2, arrived_at=0.0))
    first = pop_all(queue)[:50]
    assert sum(t.tenant_id == "A" for t in first) == 10  # 10 x 4 units vs 40 x 1 unit


def test_fair_share_picks_the_tenant_edf_picks_its_ticket() -> None:
    queue = SchedulingQueue(NO_AGING)
    for n in range(4):
        queue.push(Ticket(f"a{n}", "A", 1, arrived_at=0.0, deadline=100.0 - n))
    queue.push(Ticket("b-late", "B", 1, arrived_at=0.0, deadline=500.0))
    queue.push(Ticket("b-soon", "B", 1, arrived_at=0.0, deadline=1.0))
    order = [t.id for t in pop_all(queue)]
    # Turns alternate A, B from equal start tags; at each tie the earlier head deadline goes
    # first (b-soon before a3, a2 before b-late); inside A, the earliest deadline (a3) first.
    # B's urgent ticket does not buy B a second turn before A's.
    assert order == ["b-soon", "a3", "a2", "b-late", "a1", "a0"]


def test_priority_classes_come_before_fair_share() -> None:
    queue = SchedulingQueue(NO_AGING)
    for n in range(50):
        queue.push(Ticket(f"a{n}", "A", 0, arrived_at=0.0))
    queue.push(Ticket("b", "B", 1, arrived_at=0.0))
    order = [t.id for t in pop_all(queue)]
    assert order.index("b") == 50


def test_an_empty_class_forgets_old_turns() -> None:
    queue = SchedulingQueue(NO_AGING)
    for n in range(100):
        queue.push(Ticket(f"a{n}", "A", 3, arrived_at=0.0))
    pop_all(queue)
    queue.push(Ticket("b0", "B", 3, arrived_at=5.0))
    queue.push(Ticket("b1", "B", 3, arrived_at=5.0))
    queue.push(Ticket("a-new", "A", 3, arrived_at=6.0))
    assert [t.id for t in pop_all(queue)] == ["b0", "a-new", "b1"]


def test_removed_heads_hand_the_turn_on() -> None:
    queue = SchedulingQueue(NO_AGING)
    for n in range(3):
        queue.push(Ticket(f"a{n}", "A", 3, arrived_at=float(n)))
        queue.push(Ticket(f"b{n}", "B", 3, arrived_at=float(n) + 0.5))
    assert queue.remove("a0") and queue.remove("b2")
    # Both flows keep their turn; at each tie the earlier arrival leads (b0 at 0.5 before a1).
    assert [t.id for t in pop_all(queue)] == ["b0", "a1", "b1", "a2"]
    assert len(queue) == 0


def test_estimate_ahead_counts_better_classes_and_a_fair_share_of_its_own() -> None:
    queue = SchedulingQueue(QueueSettings(aging_s=None, tenant_weights={"B": 2.0}))
    for n in range(5):
        queue.push(Ticket(f"hi{n}", "C", 0, arrived_at=0.0))
    for n in range(100):
        queue.push(Ticket(f"a{n}", "A", 4, arrived_at=0.0))
    for n in range(3):
        queue.push(Ticket(f"b{n}", "B", 4, arrived_at=0.0))
    queue.push(Ticket("worse", "A", 7, arrived_at=0.0))
    new_a = Ticket("new-a", "A", 4, arrived_at=1.0)
    new_b = Ticket("new-b", "B", 4, arrived_at=1.0)
    new_c = Ticket("new-c", "C", 4, arrived_at=1.0)
    # A: 100 own ahead, and B's 3 (B's share would be 202 turns, capped by its backlog).
    assert queue.estimate_ahead(new_a, 1.0) == 5 + 100 + 3
    # B (weight 2): its 3 own, then (3 + 1) * 1 / 2 = 2 of A's.
    assert queue.estimate_ahead(new_b, 1.0) == 5 + 3 + 2
    # C has nothing in class 4: one turn's worth of A (1) and B (2).
    assert queue.estimate_ahead(new_c, 1.0) == 5 + 0 + 3
    # A new tenant in class 0 waits one turn of C's there, not all five.
    assert queue.estimate_ahead(Ticket("top", "Z", 0, arrived_at=1.0), 1.0) == 1
    # EDF inside its flow: an urgent ticket counts none of A's 100 (they have no deadline),
    # then one turn's worth of the others (B, weight 2: two tickets).
    urgent_a = Ticket("urgent-a", "A", 4, arrived_at=1.0, deadline=9.0)
    assert queue.estimate_ahead(urgent_a, 1.0) == 5 + 0 + 2


def test_estimate_ahead_counts_exactly_the_own_tickets_sorting_before() -> None:
    queue = SchedulingQueue(NO_AGING)
    for n in range(200):  # deadlines 10, 11, ... 209, pushed in a scrambled order
        m = (n * 37) % 200
        queue.push(Ticket(f"a{m}", "A", 4, arrived_at=float(n), deadline=10.0 + m))
    for n in range(0, 200, 3):
        queue.remove(f"a{(n * 37) % 200}")
    live = [10.0 + (n * 37) % 200 for n in range(200) if n % 3]
    for deadline in (5.0, 10.0, 50.5, 100.0, 209.0, 1e9):
        probe = Ticket("new", "A", 4, arrived_at=300.0, deadline=deadline)
        assert queue.estimate_ahead(probe, 300.0) == sum(d <= deadline for d in live)
    assert queue.estimate_ahead(Ticket("none", "A", 4, arrived_at=300.0), 300.0) == len(live)
