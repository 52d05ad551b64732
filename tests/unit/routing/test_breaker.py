"""The circuit breaker with an injected clock: open, cool down, probe, close or reopen."""

from __future__ import annotations

from openautoglm.core.clock import ManualClock
from openautoglm.routing.breaker import BreakerSettings, BreakerState, CircuitBreaker

SETTINGS = BreakerSettings(
    consecutive_failures=3, error_rate=0.5, min_calls=10, window_s=10, cooldown_s=5
)


def test_consecutive_failures_open_it_and_a_successful_probe_closes_it() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(clock, SETTINGS)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert breaker.retry_in_s == 5
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.2)
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(clock, SETTINGS)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and breaker.times_opened == 2
    clock.advance(4)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_an_error_rate_over_the_window_opens_it() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(clock, SETTINGS)
    for index in range(10):  # alternating: never 3 in a row, but 50% failed
        if index % 2:
            breaker.record_failure()
        else:
            breaker.record_success()
        clock.advance(0.5)
    assert breaker.state is BreakerState.OPEN


def test_old_outcomes_leave_the_window() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(clock, SETTINGS)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_success()
        breaker.record_success()
    clock.advance(11)
    for _ in range(9):
        breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED  # 1 of 10 in the window
