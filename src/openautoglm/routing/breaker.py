"""A circuit breaker per instance: closed -> open -> half-open -> closed.

Closed: calls pass; the breaker opens after ``consecutive_failures`` failures in a row, or when at
least ``min_calls`` calls in the last ``window_s`` seconds failed at ``error_rate`` or more.
Open: calls are refused until ``cooldown_s`` has passed. Half-open: one probe call at a time is
let through; its success closes the breaker, its failure opens it for another cooldown.
Time comes from the injected clock (``monotonic``), so tests need no sleeps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from openautoglm.core.clock import Clock


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_calls: int = 20
    window_s: float = 10.0
    cooldown_s: float = 10.0


class CircuitBreaker:
    """Decides whether an instance may take a call, from the outcomes of earlier calls."""

    def __init__(self, clock: Clock, settings: BreakerSettings | None = None) -> None:
        self._clock = clock
        self.settings = settings or BreakerSettings()
        self.state = BreakerState.CLOSED
        self._failures_in_a_row = 0
        self._outcomes: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._opened_at = 0.0
        self._probing = False
        self.times_opened = 0

    def allow(self) -> bool:
        """Whether a call may go to the instance now (in half-open: the one probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock.monotonic() - self._opened_at < self.settings.cooldown_s:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._close()
            return
        self._failures_in_a_row = 0
        self._remember(failed=False)

    def record_failure(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._open()
            return
        if self.state is BreakerState.OPEN:
            return
        self._failures_in_a_row += 1
        self._remember(failed=True)
        if self._failures_in_a_row >= self.settings.consecutive_failures or self._rate_tripped():
            self._open()

    @property
    def probing(self) -> bool:
        """Whether the half-open probe call is out."""
        return self._probing

    def abandon_probe(self) -> None:
        """The probe call ended without an outcome (its client went away): allow another."""
        self._probing = False

    def probe_passed(self) -> None:
        """An active health check answered: let the next call through as the probe."""
        if self.state is BreakerState.OPEN:
            self.state = BreakerState.HALF_OPEN
            self._probing = False

    @property
    def retry_in_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        elapsed = self._clock.monotonic() - self._opened_at
        return max(0.0, self.settings.cooldown_s - elapsed)

    def _remember(self, failed: bool) -> None:
        now = self._clock.monotonic()
        self._outcomes.append((now, failed))
        horizon = now - self.settings.window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def _rate_tripped(self) -> bool:
        calls = len(self._outcomes)
        if calls < self.settings.min_calls:
            return False
        failed = sum(1 for _, was_failure in self._outcomes if was_failure)
        return failed / calls >= self.settings.error_rate

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = self._clock.monotonic()
        self._probing = False
        self.times_opened += 1

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self._failures_in_a_row = 0
        self._outcomes.clear()
        self._probing = False
