"""When to retry a call and how long to wait first; pure decisions, the clients do the waiting.

Retried: answers 429 and 503, and failures to *establish* a connection. Nothing else is: other
statuses will not change on a second try, and a read failure or timeout may mean the server already
did (and billed) the work. A stream is never retried once its answer has started, because the
clients only consult this module before handing the stream to the caller.

Wait before retry ``n`` (0-based): the server's ``Retry-After`` (seconds or HTTP-date), capped at
``max_retry_after_s``; otherwise ``min(max_delay_s, initial_delay_s * 2**n)`` shortened by up to
``jitter_ratio`` at random so that clients refused together do not return together.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC

import httpx

_log = logging.getLogger("openautoglm.sdk")

RETRYABLE_STATUSES = frozenset({429, 503})
# The request never left the client for these, so sending it again cannot duplicate work.
_RETRYABLE_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The shape of the backoff; the number of retries is the client's ``max_retries``."""

    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 60.0
    jitter_ratio: float = 0.25


def parse_retry_after_s(value: str | None, now_s: float) -> float | None:
    """Seconds to wait for a ``Retry-After`` of delta-seconds or HTTP-date; ``None`` if unusable."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now_s
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True, slots=True)
class Retrier:
    """Retry decisions for one client; ``rng`` returns floats in [0, 1), ``now`` epoch seconds."""

    max_retries: int
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: Callable[[], float] = random.random
    now: Callable[[], float] = time.time

    def retry_after_s(self, headers: Mapping[str, str]) -> float | None:
        """The server's ``Retry-After`` in seconds; ``headers`` must be case-insensitive."""
        return parse_retry_after_s(headers.get("retry-after"), self.now())

    def backoff_s(self, attempt: int) -> float:
        """The jittered exponential wait before retry number ``attempt`` (0-based)."""
        policy = self.policy
        base = min(policy.max_delay_s, policy.initial_delay_s * 2.0**attempt)
        return base * (1.0 - policy.jitter_ratio * self.rng())

    def delay_after_status(
        self, attempt: int, status: int, retry_after_s: float | None
    ) -> float | None:
        """Seconds to wait before retrying an answer with ``status``, or ``None`` to give up."""
        if status not in RETRYABLE_STATUSES or attempt >= self.max_retries:
            return None
        if retry_after_s is not None:
            delay = min(retry_after_s, self.policy.max_retry_after_s)
        else:
            delay = self.backoff_s(attempt)
        _log.debug("status %d, retry %d/%d in %.2fs", status, attempt + 1, self.max_retries, delay)
        return delay

    def delay_after_error(self, attempt: int, exc: httpx.TransportError) -> float | None:
        """Seconds to wait before retrying after a transport failure, or ``None`` to give up."""
        if not isinstance(exc, _RETRYABLE_TRANSPORT_ERRORS) or attempt >= self.max_retries:
            return None
        delay = self.backoff_s(attempt)
        _log.debug("%r, retry %d/%d in %.2fs", exc, attempt + 1, self.max_retries, delay)
        return delay
