"""A retry budget: retries may add at most ``ratio`` of the requests (plus ``min_per_s``), so
retrying cannot multiply an outage (the same idea as Finagle's and Envoy's budgets)."""

from __future__ import annotations

from collections import deque

from openautoglm.core.clock import Clock


class RetryBudget:
    """Counts requests and retries over the last ``window_s`` seconds."""

    def __init__(
        self, clock: Clock, ratio: float = 0.2, min_per_s: float = 10.0, window_s: float = 10.0
    ) -> None:
        self._clock = clock
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def record_request(self) -> None:
        self._requests.append(self._clock.monotonic())

    def try_retry(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        now = self._clock.monotonic()
        horizon = now - self.window_s
        for times in (self._requests, self._retries):
            while times and times[0] < horizon:
                times.popleft()
        allowed = self.min_per_s * self.window_s + self.ratio * len(self._requests)
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True
