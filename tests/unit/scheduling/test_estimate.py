"""The arithmetic behind admission and scaling: service-time averages, waits, percentiles."""

from __future__ import annotations

import math

import pytest

from openautoglm.scheduling.estimate import (
    ServiceTimeEstimate,
    WaitRecord,
    desired_capacity,
    estimate_wait_s,
    nearest_rank,
)
from openautoglm.scheduling.model import SchedulerSettings


def test_the_service_estimate_follows_rfc_6298_smoothing() -> None:
    estimate = ServiceTimeEstimate(initial_s=5.0, alpha=0.25)
    assert (estimate.value_s, estimate.deviation_s, estimate.likely_s) == (5.0, 0.0, 5.0)
    estimate.observe(2.0)  # the first observation replaces the guess; deviation = half of it
    assert (estimate.value_s, estimate.deviation_s) == (2.0, 1.0)
    estimate.observe(6.0)  # deviation += 0.25 * (|6 - 2| - 1); mean += 0.25 * (6 - 2)
    assert (estimate.value_s, estimate.deviation_s, estimate.likely_s) == (3.0, 1.75, 4.75)
    estimate.observe(-1.0)  # a clock oddity counts as zero, never negative
    assert estimate.value_s == 2.25 and estimate.observations == 3


@pytest.mark.parametrize(
    ("ahead", "free", "capacity", "service_s", "expected"),
    [
        (0, 1, 4, 2.0, 0.0),  # a free slot: no wait
        (2, 3, 4, 2.0, 0.0),  # enough free slots for those ahead and itself
        (0, 0, 4, 2.0, 0.5),  # the next release: 2 s / 4 slots
        (7, 0, 4, 2.0, 4.0),  # 8 releases
        (0, -2, 2, 1.0, 1.5),  # capacity cut below in-flight: 2 extra releases first
        (3, 0, 0, 1.0, math.inf),  # no capacity at all
    ],
)
def test_estimated_wait(
    ahead: int, free: int, capacity: int, service_s: float, expected: float
) -> None:
    assert estimate_wait_s(ahead, free, capacity, service_s) == expected


def test_desired_capacity_rounds_up_and_refuses_a_bad_target() -> None:
    assert desired_capacity(depth=0, in_flight=0, service_s=1.0, target_wait_s=5.0) == 0
    assert desired_capacity(depth=0, in_flight=3, service_s=1.0, target_wait_s=5.0) == 3
    assert desired_capacity(depth=1, in_flight=3, service_s=1.0, target_wait_s=5.0) == 4
    assert desired_capacity(depth=30, in_flight=6, service_s=2.0, target_wait_s=20.0) == 9
    with pytest.raises(ValueError, match="target_wait_s"):
        desired_capacity(depth=1, in_flight=1, service_s=1.0, target_wait_s=math.inf)


def test_wait_records_keep_totals_and_recent_percentiles() -> None:
    record = WaitRecord(window=100)
    for wait_s in range(1, 201):  # 1..200 s; the window keeps 101..200
        record.observe(float(wait_s))
    summary = record.summary()
    assert (summary.count, summary.max_s, summary.mean_s) == (200, 200.0, 100.5)
    assert (summary.p50_s, summary.p99_s) == (150.0, 199.0)
    assert WaitRecord().summary().p99_s == 0.0
    assert nearest_rank([1.0, 2.0, 3.0], 0.0) == 1.0 and nearest_rank([], 0.5) == 0.0


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"max_queue": -1}, "max_queue"),
        ({"max_retry_after_s": 0.0}, "max_retry_after_s"),
        ({"aging_s": -5.0}, "aging_s"),
        ({"tenant_weights": {"t": -1.0}}, "tenant weight 't'"),
        ({"initial_service_s": 0.0}, "initial service time"),
        ({"service_ewma_alpha": 1.5}, "alpha"),
        ({"wait_window": 0}, "window"),
    ],
)
def test_settings_are_checked_when_built(knobs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SchedulerSettings(**knobs)  # type: ignore[arg-type]
