"""One effective-priority class: tenants share it by weight, each tenant's tickets run by deadline.

Fair share is start-time fair queueing (SFQ) over tenant *flows*. Each tenant with tickets in the
class is one flow with a start tag; the flow with the smallest start tag runs next, the ticket it
runs is its own earliest deadline (then earliest arrival), and its start tag then moves on by
``ticket.cost / weight``. A flow that becomes backlogged starts at ``max(its last finish tag, the
class's virtual time)``, where the virtual time is the start tag of the last ticket run, so an idle
tenant banks no credit and a bursting one is served at its weighted rate, never ahead of everyone.

How fair share and EDF interact: fair share decides *whose turn* it is; EDF decides *which of that
tenant's tickets* runs. Flows with equal start tags (a fresh class, or tenants in lockstep) are
broken by their heads' deadlines, then arrival, so with one tenant, or one ticket per tenant, the
order is plain EDF. A tenant cannot take another tenant's turn by sending earlier deadlines.

Invariants: every live placement is in exactly one flow's heap; a flow's heap top is live (dead
entries are lazily left below it); ``_ready`` holds one current entry (matching ``version``) for
each backlogged flow, plus stale ones skipped on pop. A drained flow keeps its finish tag (so it
cannot come straight back ahead of its turn) until the class empties, when all tags reset; the
flows kept are at most the tenants seen in the class's busy period.
Push, pop and discard are O(log n); ``estimate_ahead`` costs the tickets it counts.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

from openautoglm.scheduling.ticket import Ticket

_COMPACT_MIN = 64


class Placement:
    """A ticket's place in one class; a promotion (aging) makes a new one and kills the old."""

    __slots__ = ("alive", "level", "seq", "ticket")

    def __init__(self, ticket: Ticket, seq: int, level: int) -> None:
        self.ticket = ticket
        self.seq = seq
        self.level = level
        self.alive = True


_FlowItem = tuple[float, float, int, Placement]  # (deadline key, arrived_at, seq, placement)
_ReadyItem = tuple[
    float, float, float, int, int, str
]  # (start, deadline, arrival, seq, ver, tenant)


class _Flow:
    __slots__ = (
        "finish_tag",
        "heap",
        "live",
        "start_tag",
        "tenant",
        "version",
        "weight",
    )

    def __init__(self, tenant: str, weight: float) -> None:
        self.tenant = tenant
        self.weight = weight
        self.heap: list[_FlowItem] = []
        self.live = 0
        self.start_tag = 0.0
        self.finish_tag = 0.0
        self.version = 0

    def count_before(self, deadline_key: float, arrived_at: float) -> int:
        """Live tickets that sort at or before ``(deadline_key, arrived_at)``.

        A walk down the heap that prunes every subtree whose root sorts after the key, so it
        costs the number of such tickets (plus dead entries among them), not the flow's size.
        """
        heap, count, stack = self.heap, 0, [0] if self.heap else []
        while stack:
            index = stack.pop()
            item_deadline, item_arrival, _, placement = heap[index]
            if item_deadline > deadline_key or (
                item_deadline == deadline_key and item_arrival > arrived_at
            ):
                continue
            count += placement.alive
            stack.extend(child for child in (2 * index + 1, 2 * index + 2) if child < len(heap))
        return count

    def drop_dead_top(self) -> None:
        heap = self.heap
        while heap and not heap[0][3].alive:
            heapq.heappop(heap)
        if len(heap) > 2 * self.live + _COMPACT_MIN:
            self.heap = [item for item in heap if item[3].alive]
            heapq.heapify(self.heap)


class FairClass:
    """The tickets of one effective priority class, served by weighted fair share then EDF."""

    def __init__(self, weight_of: Callable[[str], float]) -> None:
        self._weight_of = weight_of
        self._flows: dict[str, _Flow] = {}
        self._ready: list[_ReadyItem] = []
        self._virtual_time = 0.0
        self._size = 0
        self._active_weight = 0.0
        self._active_flows = 0

    def __len__(self) -> int:
        return self._size

    def add(self, placement: Placement) -> None:
        ticket = placement.ticket
        flow = self._flows.get(ticket.tenant_id)
        if flow is None:
            flow = self._flows[ticket.tenant_id] = _Flow(
                ticket.tenant_id, self._weight_of(ticket.tenant_id)
            )
        item = (ticket.deadline_key, ticket.arrived_at, placement.seq, placement)
        heapq.heappush(flow.heap, item)
        flow.live += 1
        self._size += 1
        if flow.live == 1:
            flow.start_tag = max(flow.finish_tag, self._virtual_time)
            self._active_weight += flow.weight
            self._active_flows += 1
            self._publish(flow)
        elif flow.heap[0][3] is placement:
            self._publish(flow)

    def discard(self, placement: Placement) -> None:
        """Take a live placement out (a client went away, or the ticket was promoted)."""
        flow = self._flows[placement.ticket.tenant_id]
        was_head = flow.heap[0][3] is placement
        placement.alive = False
        self._forget(flow, placement.ticket)
        flow.drop_dead_top()
        if was_head or flow.live == 0:
            self._after_change(flow)

    def pop(self) -> Placement | None:
        """The next placement: the head of the flow with the smallest start tag."""
        while self._ready:
            *_, version, tenant = heapq.heappop(self._ready)
            flow = self._flows.get(tenant)
            if flow is None or flow.version != version:
                continue
            placement = heapq.heappop(flow.heap)[3]
            placement.alive = False
            self._virtual_time = max(self._virtual_time, flow.start_tag)
            flow.finish_tag = flow.start_tag + placement.ticket.cost / flow.weight
            flow.start_tag = flow.finish_tag
            self._forget(flow, placement.ticket)
            flow.drop_dead_top()
            self._after_change(flow)
            return placement
        return None

    def estimate_ahead(self, ticket: Ticket) -> int:
        """About how many tickets of this class would run before ``ticket`` (not queued yet).

        Its own flow's tickets that sort before it (exactly: EDF, then arrival), plus the other
        flows' share of the turns it waits through, ``(own + 1) * other_weight / weight``,
        capped by their backlog: fair share, assuming the others stay busy.
        """
        flow = self._flows.get(ticket.tenant_id)
        weight = flow.weight if flow is not None else self._weight_of(ticket.tenant_id)
        own, own_weight, own_live = 0, 0.0, 0
        if flow is not None and flow.live:
            own = flow.count_before(ticket.deadline_key, ticket.arrived_at)
            own_weight, own_live = weight, flow.live
        others_depth = self._size - own_live
        others_weight = max(0.0, self._active_weight - own_weight)
        share = math.floor((own + 1) * others_weight / weight + 1e-9)
        return own + min(others_depth, share)

    def _forget(self, flow: _Flow, ticket: Ticket) -> None:
        flow.live -= 1
        self._size -= 1

    def _after_change(self, flow: _Flow) -> None:
        if self._size == 0:
            self._reset()
        elif flow.live:
            self._publish(flow)
        else:
            flow.version += 1
            flow.heap.clear()
            self._active_weight -= flow.weight
            self._active_flows -= 1
            if flow.finish_tag <= self._virtual_time:
                del self._flows[flow.tenant]

    def _publish(self, flow: _Flow) -> None:
        flow.version += 1
        deadline_key, arrived_at, seq, _ = flow.heap[0]
        item = (flow.start_tag, deadline_key, arrived_at, seq, flow.version, flow.tenant)
        heapq.heappush(self._ready, item)
        if len(self._ready) > 2 * self._active_flows + _COMPACT_MIN:
            self._ready = [entry for entry in self._ready if self._is_current(entry)]
            heapq.heapify(self._ready)

    def _is_current(self, entry: _ReadyItem) -> bool:
        flow = self._flows.get(entry[5])
        return flow is not None and flow.version == entry[4]

    def _reset(self) -> None:
        """An empty class starts a new busy period: nobody keeps tags from the last one."""
        self._flows.clear()
        self._ready.clear()
        self._virtual_time = 0.0
        self._active_weight = 0.0
        self._active_flows = 0
