"""The per-model scheduling queue: which waiting ticket runs next. Pure and synchronous.

Order, for ``pop(now)``:

1. **Effective priority class**, 0 first. A ticket starts in the class of its priority and, with
   aging on, moves up one class per ``aging_s`` seconds waited: its class at ``now`` is
   ``max(0, priority - floor((now - arrived_at) / aging_s))``. A priority-9 ticket therefore
   competes as priority 0 after ``9 * aging_s`` seconds, so no stream of better tickets starves it.
   By default only tickets *without a deadline* age: one with a deadline cannot wait forever
   (it runs or is answered at its deadline), and letting it climb would, under overload, put old
   low-priority work ahead of fresh higher-priority work with tighter deadlines, so that the
   higher class misses instead (``bench/scheduler_sim.py`` shows it: ``ours-age-all``). Set
   ``age_tickets_with_deadline`` to age every ticket.
2. **Within a class, weighted fair share between tenants, EDF within each tenant** (see
   :mod:`.fair`): the tenant whose turn it is (start-time fair queueing on ``cost / weight``) runs
   its earliest-deadline ticket (no deadline sorts after every deadline), then its earliest
   arrival. Ties between tenants' turns go to the earliest head deadline, then arrival, so with
   one tenant the order is exactly priority class, then deadline, then arrival.

Aging is done by moving a ticket to the next class when its promotion time passes (at most nine
moves in a ticket's life), driven by a heap of promotion times; so push, pop and remove stay
O(log n) amortised. Expiry is explicit: ``pop_expired(t)`` takes out tickets whose deadline is at
or before ``t`` (the scheduler passes ``now`` plus the likely service time, so a ticket that can no
longer finish leaves before it costs its tenant a turn); ``pop`` does not look at deadlines beyond
ordering, so a caller that must not start late tickets calls ``pop_expired`` first.

Invariant: a ticket id is queued at most once; ``len`` counts queued tickets exactly; a ticket
lives in exactly one class, the one its aging has reached as of the last ``pop``/``estimate``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from openautoglm.scheduling.fair import FairClass, Placement
from openautoglm.scheduling.ticket import NUM_PRIORITIES, Ticket

_COMPACT_MIN = 64


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """``aging_s``: seconds of waiting per class gained (``None``: no aging), for tickets without
    a deadline, and for all when ``age_tickets_with_deadline``.

    ``tenant_weights``: a tenant's share of a class relative to others (default
    ``default_tenant_weight``); weight 2 gets twice the turns of weight 1 when both are waiting.
    """

    aging_s: float | None = 5.0
    age_tickets_with_deadline: bool = False
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    default_tenant_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.aging_s is not None and not (self.aging_s > 0 and math.isfinite(self.aging_s)):
            raise ValueError(f"aging_s must be a positive number or None, got {self.aging_s!r}")
        weights = {"default_tenant_weight": self.default_tenant_weight, **self.tenant_weights}
        for name, weight in weights.items():
            if not (weight > 0 and math.isfinite(weight)):
                raise ValueError(f"tenant weight {name!r} must be positive, got {weight!r}")

    def weight_of(self, tenant_id: str) -> float:
        return self.tenant_weights.get(tenant_id, self.default_tenant_weight)

    def ages(self, ticket: Ticket) -> bool:
        """Whether ``ticket`` moves up classes while it waits."""
        if self.aging_s is None or ticket.priority == 0:
            return False
        return ticket.deadline is None or self.age_tickets_with_deadline


class SchedulingQueue:
    """Queued tickets of one model, ordered by effective priority, fair share, deadline, arrival."""

    def __init__(self, settings: QueueSettings | None = None) -> None:
        self.settings = settings or QueueSettings()
        self._classes = [FairClass(self.settings.weight_of) for _ in range(NUM_PRIORITIES)]
        self._placements: dict[str, Placement] = {}
        self._promotions: list[tuple[float, int, Placement]] = []
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._placements)

    def __contains__(self, ticket_id: object) -> bool:
        return ticket_id in self._placements

    def push(self, ticket: Ticket) -> None:
        """Queue a ticket; ``ValueError`` when a ticket with its id is already queued."""
        if ticket.id in self._placements:
            raise ValueError(f"ticket {ticket.id!r} is already queued")
        seq = next(self._seq)
        self._place(Placement(ticket, seq, ticket.priority))
        if ticket.deadline is not None:
            heapq.heappush(self._deadlines, (ticket.deadline, seq, ticket.id))
            self._compact_deadlines()

    def pop(self, now: float) -> Ticket | None:
        """Take out and return the ticket to run next at ``now`` (``None`` when empty)."""
        self._age(now)
        for fair_class in self._classes:
            placement = fair_class.pop()
            if placement is not None:
                del self._placements[placement.ticket.id]
                return placement.ticket
        return None

    def remove(self, ticket_id: str) -> bool:
        """Take a queued ticket out (its client went away); ``False`` when it is not queued."""
        placement = self._placements.pop(ticket_id, None)
        if placement is None:
            return False
        self._classes[placement.level].discard(placement)
        return True

    def pop_expired(self, now: float) -> list[Ticket]:
        """Take out every queued ticket whose deadline is at or before ``now``, earliest first."""
        expired: list[Ticket] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq, ticket_id = heapq.heappop(self._deadlines)
            placement = self._placements.get(ticket_id)
            if placement is not None and placement.seq == seq:
                self.remove(ticket_id)
                expired.append(placement.ticket)
        return expired

    def next_deadline(self) -> float | None:
        """The earliest deadline among queued tickets (``None``: none has one)."""
        while self._deadlines and not self._is_queued(self._deadlines[0]):
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def effective_priority(self, ticket: Ticket, now: float) -> int:
        """The class ``ticket`` competes in at ``now``, after aging."""
        return max(0, ticket.priority - self._steps_aged(ticket, now))

    def estimate_ahead(self, ticket: Ticket, now: float) -> int:
        """About how many queued tickets would run before ``ticket`` if it were pushed at ``now``.

        Every ticket in a better class, plus its fair-share estimate within its own class
        (:meth:`.fair.FairClass.estimate_ahead`). Later arrivals and later promotions are not
        foreseen, so under a stream of better traffic the real wait is longer.
        """
        self._age(now)
        level = self.effective_priority(ticket, now)
        better = sum(len(fair_class) for fair_class in self._classes[:level])
        return better + self._classes[level].estimate_ahead(ticket)

    def depth_by_class(self, now: float) -> tuple[int, ...]:
        """Queued tickets per effective class at ``now`` (index 0 = highest)."""
        self._age(now)
        return tuple(len(fair_class) for fair_class in self._classes)

    def _place(self, placement: Placement) -> None:
        ticket = placement.ticket
        self._placements[ticket.id] = placement
        self._classes[placement.level].add(placement)
        aging_s = self.settings.aging_s
        if aging_s is not None and placement.level > 0 and self.settings.ages(ticket):
            steps = ticket.priority - placement.level + 1
            promote_at = ticket.arrived_at + steps * aging_s
            heapq.heappush(self._promotions, (promote_at, placement.seq, placement))
            if len(self._promotions) > 2 * len(self._placements) + _COMPACT_MIN:
                self._promotions = [item for item in self._promotions if item[2].alive]
                heapq.heapify(self._promotions)

    def _age(self, now: float) -> None:
        promotions = self._promotions
        while promotions and promotions[0][0] <= now:
            _, seq, placement = heapq.heappop(promotions)
            if not placement.alive:
                continue
            self._classes[placement.level].discard(placement)
            level = placement.ticket.priority - self._steps_aged(placement.ticket, now)
            self._place(Placement(placement.ticket, seq, max(0, level)))
            promotions = self._promotions

    def _steps_aged(self, ticket: Ticket, now: float) -> int:
        """How many classes ``ticket`` has gained by ``now``: the largest k with
        ``arrived_at + k * aging_s <= now``, computed the way promotion times are."""
        aging_s = self.settings.aging_s
        if aging_s is None or not self.settings.ages(ticket) or now < ticket.arrived_at + aging_s:
            return 0
        steps = min(ticket.priority, math.floor((now - ticket.arrived_at) / aging_s))
        while steps < ticket.priority and ticket.arrived_at + (steps + 1) * aging_s <= now:
            steps += 1
        while steps > 0 and ticket.arrived_at + steps * aging_s > now:
            steps -= 1
        return steps

    def _is_queued(self, item: tuple[float, int, str]) -> bool:
        placement = self._placements.get(item[2])
        return placement is not None and placement.seq == item[1]

    def _compact_deadlines(self) -> None:
        if len(self._deadlines) > 2 * len(self._placements) + _COMPACT_MIN:
            self._deadlines = [item for item in self._deadlines if self._is_queued(item)]
            heapq.heapify(self._deadlines)
