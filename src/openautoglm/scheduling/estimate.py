"""The numbers behind admission and scaling: service time, expected wait, wait records.

Pure arithmetic shared by the asyncio scheduler and the simulation. The wait model is the simple
one an operator can check by hand: with ``capacity`` slots each freeing every ``service_s`` seconds
on average, slots free up at ``capacity / service_s`` per second, and a ticket starts after the
tickets ahead of it, plus itself, have taken a slot. Nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


class ServiceTimeEstimate:
    """Moving averages of observed service times and of their spread, in seconds.

    The mean (``value_s``) paces the queue: slots free up every ``value_s / capacity`` seconds.
    The spread (``deviation_s``, the mean absolute deviation) makes ``likely_s = value_s +
    deviation_s``, the time a request can be expected to need when asking "will it finish by its
    deadline" (a request started with just the mean left finishes late about half the time).
    Updates follow RFC 6298's smoothed round-trip time: the first observation sets the mean and
    half of it as the deviation (a guess should not linger), each later one moves the deviation
    by ``alpha`` of ``|observed - mean| - deviation``, then the mean by ``alpha`` of the error.
    Before any observation: ``initial_s`` and no deviation.
    """

    def __init__(self, initial_s: float = 1.0, alpha: float = 0.2) -> None:
        if not (initial_s > 0 and math.isfinite(initial_s)):
            raise ValueError(f"initial service time must be positive, got {initial_s!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.value_s = initial_s
        self.deviation_s = 0.0
        self.alpha = alpha
        self.observations = 0

    @property
    def likely_s(self) -> float:
        return self.value_s + self.deviation_s

    def observe(self, service_s: float) -> None:
        service_s = max(0.0, service_s)
        if self.observations == 0:
            self.value_s, self.deviation_s = service_s, service_s / 2
        else:
            self.deviation_s += self.alpha * (abs(service_s - self.value_s) - self.deviation_s)
            self.value_s += self.alpha * (service_s - self.value_s)
        self.observations += 1


def estimate_wait_s(ahead: int, free_slots: int, capacity: int, service_s: float) -> float:
    """Seconds until a ticket with ``ahead`` tickets before it gets a slot.

    It needs ``ahead + 1 - free_slots`` slots to free up (``free_slots`` is negative while capacity
    was cut below the work in flight); none needed means no wait; no capacity means forever.
    """
    needed = ahead + 1 - free_slots
    if needed <= 0:
        return 0.0
    if capacity <= 0:
        return math.inf
    return needed * service_s / capacity


def desired_capacity(depth: int, in_flight: int, service_s: float, target_wait_s: float) -> int:
    """Slots that would keep today's work running and drain the queue within ``target_wait_s``.

    The busy slots (``in_flight``, by Little's law the concurrency the current arrivals need) plus
    enough extra to serve the ``depth`` queued tickets' ``depth * service_s`` slot-seconds of work
    in ``target_wait_s`` seconds. Idle gives 0; the caller applies its floor and ceiling.
    """
    if not (target_wait_s > 0 and math.isfinite(target_wait_s)):
        raise ValueError(f"target_wait_s must be a positive number, got {target_wait_s!r}")
    return math.ceil(in_flight + depth * service_s / target_wait_s - 1e-9)


@dataclass(frozen=True, slots=True)
class WaitSummary:
    """Queue waits of admitted tickets: all-time count, mean and max; percentiles of recent ones."""

    count: int
    mean_s: float
    p50_s: float
    p99_s: float
    max_s: float


class WaitRecord:
    """Waits observed for one priority: running totals and the last ``window`` samples."""

    def __init__(self, window: int = 1024) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0
        self._recent: deque[float] = deque(maxlen=window)

    def observe(self, wait_s: float) -> None:
        self.count += 1
        self.total_s += wait_s
        self.max_s = max(self.max_s, wait_s)
        self._recent.append(wait_s)

    def summary(self) -> WaitSummary:
        recent = sorted(self._recent)
        return WaitSummary(
            count=self.count,
            mean_s=self.total_s / self.count if self.count else 0.0,
            p50_s=nearest_rank(recent, 0.50),
            p99_s=nearest_rank(recent, 0.99),
            max_s=self.max_s,
        )


def nearest_rank(sorted_values: list[float], quantile: float) -> float:
    """The nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(quantile * len(sorted_values)))
    return sorted_values[rank - 1]
