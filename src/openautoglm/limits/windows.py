"""Fixed windows: the current minute, UTC day and UTC month, and when each ends.

Invariant: a window id changes exactly when its window ends, so a counter keyed by the id starts
from zero in the next window and "60 requests per minute" means 60 per window, exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class Windows:
    """The windows that contain one instant; ``*_ends_s`` are POSIX seconds."""

    now_s: float
    minute_id: str
    minute_ends_s: float
    day_id: str
    day_ends_s: float
    month_id: str
    month_ends_s: float


def current_windows(now: datetime) -> Windows:
    """The minute (``floor(t / 60)``), UTC day and UTC month that contain ``now``."""
    now_s = now.timestamp()
    return Windows(now_s, *_windows_of_minute(math.floor(now_s / 60)))


@functools.lru_cache(maxsize=8)
def _windows_of_minute(minute: int) -> tuple[str, float, str, float, str, float]:
    # Pure and asked for on every limited request: computed once per minute.
    start = datetime.fromtimestamp(minute * 60, UTC)
    day_start = datetime(start.year, start.month, start.day, tzinfo=UTC)
    next_month = (
        datetime(start.year + 1, 1, 1, tzinfo=UTC)
        if start.month == 12
        else datetime(start.year, start.month + 1, 1, tzinfo=UTC)
    )
    return (
        str(minute),
        (minute + 1) * 60.0,
        day_start.strftime("%Y-%m-%d"),
        (day_start + timedelta(days=1)).timestamp(),
        start.strftime("%Y-%m"),
        next_month.timestamp(),
    )
