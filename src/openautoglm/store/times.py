"""Datetimes in and out of the store.

SQLite keeps a datetime's wall-clock fields as text and hands them back naive: every value is
stored in UTC (``to_utc``) and read back as UTC-aware (``aware``), on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def to_utc(moment: datetime) -> datetime:
    """``moment`` in UTC, to be stored."""
    return moment.astimezone(UTC)


@overload
def aware(moment: datetime) -> datetime: ...


@overload
def aware(moment: None) -> None: ...


def aware(moment: datetime | None) -> datetime | None:
    """A stored datetime as UTC-aware (a naive one was stored in UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
