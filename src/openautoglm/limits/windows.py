"""Fixed windows: the current minute, UTC day and UTC month, and when each ends.

Invariant: a window id changes exactly when its window ends, so a counter keyed by the id starts
from zero in the next window and "60 requests per minute" means 60 per window, exactly.
"""

from __future__ import annotations

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
    now = now.astimezone(UTC)
    now_s = now.timestamp()
    minute = math.floor(now_s / 60)
    day_start = datetime(now.year, now.month, now.day, tzinfo=UTC)
    next_month = (
        datetime(now.year + 1, 1, 1, tzinfo=UTC)
        if now.month == 12
        else datetime(now.year, now.month + 1, 1, tzinfo=UTC)
    )
    return Windows(
        now_s=now_s,
        minute_id=str(minute),
        minute_ends_s=(minute + 1) * 60.0,
        day_id=day_start.strftime("%Y-%m-%d"),
        day_ends_s=(day_start + timedelta(days=1)).timestamp(),
        month_id=now.strftime("%Y-%m"),
        month_ends_s=next_month.timestamp(),
    )
