"""A request waiting for a model slot, as the scheduler sees it.

Invariant: a :class:`Ticket` is frozen and valid once built: its priority is an integer from
``HIGHEST_PRIORITY`` (0) to ``LOWEST_PRIORITY`` (9) and its cost is positive. Times are seconds on
the injected clock's ``monotonic()`` scale; ``deadline`` is absolute on that scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HIGHEST_PRIORITY = 0
LOWEST_PRIORITY = 9
NUM_PRIORITIES = LOWEST_PRIORITY + 1


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request in a model's queue.

    ``cost`` is the ticket's share of its tenant's fair share (a request that counts double uses
    up twice the turn); it does not change the wait estimate, which counts tickets.
    """

    id: str
    tenant_id: str
    priority: int
    arrived_at: float
    deadline: float | None = None
    cost: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ValueError(f"priority must be an integer, got {self.priority!r}")
        if not HIGHEST_PRIORITY <= self.priority <= LOWEST_PRIORITY:
            raise ValueError(
                f"priority must be {HIGHEST_PRIORITY}..{LOWEST_PRIORITY}, got {self.priority}"
            )
        if not (self.cost > 0 and math.isfinite(self.cost)):
            raise ValueError(f"cost must be a positive number, got {self.cost!r}")
        if not math.isfinite(self.arrived_at):
            raise ValueError(f"arrived_at must be a finite time, got {self.arrived_at!r}")
        if self.deadline is not None and math.isnan(self.deadline):
            raise ValueError("deadline must be a time or None, got nan")

    @property
    def deadline_key(self) -> float:
        """The deadline for ordering: tickets without one sort after every deadline."""
        return math.inf if self.deadline is None else self.deadline
