"""The scheduler's values: its settings, why it refuses, and the snapshot it gives metrics.

Invariant: every value here is frozen, and settings are validated when built (a bad knob fails
at configuration time, not at the first request).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from openautoglm.scheduling.estimate import ServiceTimeEstimate, WaitRecord, WaitSummary
from openautoglm.scheduling.queue import QueueSettings


class RejectReason(StrEnum):
    """Why ``acquire`` refused a ticket without queueing it; the value is the error's code."""

    QUEUE_FULL = "queue_full"
    DEADLINE_UNREACHABLE = "deadline_unreachable"
    DEADLINE_PASSED = "deadline_exceeded"


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """Knobs of one model's scheduler.

    ``max_queue``: tickets that may wait (more: 503 ``queue_full``). ``deadline_is_completion``:
    deadlines are when the response is due, so admission and expiry leave room for the likely
    service time (false: deadlines are the latest start). ``aging_s``,
    ``age_tickets_with_deadline``, ``tenant_weights``, ``default_tenant_weight``: the order, see
    :class:`.queue.QueueSettings`. ``initial_service_s`` and ``service_ewma_alpha``: the
    service-time estimate before and while requests complete. ``max_retry_after_s``: the cap on
    the ``retry_after_s`` of a refusal. ``wait_window``: recent waits kept per priority for
    percentiles.
    """

    max_queue: int = 1000
    deadline_is_completion: bool = True
    aging_s: float | None = 5.0
    age_tickets_with_deadline: bool = False
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    default_tenant_weight: float = 1.0
    initial_service_s: float = 1.0
    service_ewma_alpha: float = 0.2
    max_retry_after_s: float = 60.0
    wait_window: int = 1024

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise ValueError(f"max_queue must not be negative, got {self.max_queue}")
        if not self.max_retry_after_s > 0:
            raise ValueError(f"max_retry_after_s must be positive, got {self.max_retry_after_s}")
        self.queue_settings()  # validates the ordering knobs now, not at first use
        ServiceTimeEstimate(self.initial_service_s, self.service_ewma_alpha)
        WaitRecord(self.wait_window)

    def queue_settings(self) -> QueueSettings:
        return QueueSettings(
            aging_s=self.aging_s,
            age_tickets_with_deadline=self.age_tickets_with_deadline,
            tenant_weights=self.tenant_weights,
            default_tenant_weight=self.default_tenant_weight,
        )


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """A snapshot for metrics; ``waits`` is keyed by the tickets' own (not aged) priority.

    ``completed``/``failed``: slots released with ``ok`` true/false (a slot handed back by a
    waiter cancelled as it was admitted counts as failed, and as cancelled); ``expired``:
    queued tickets answered 504 because they could no longer make their deadline.
    """

    capacity: int
    in_flight: int
    depth: int
    service_s: float
    likely_service_s: float
    estimated_wait_s: float
    admitted: int
    completed: int
    failed: int
    rejected: Mapping[str, int]
    expired: int
    cancelled: int
    waits: Mapping[int, WaitSummary]
