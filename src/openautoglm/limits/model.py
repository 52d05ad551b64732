"""Rate-limit values: what a key or tenant may use, a lease on it, and the status for headers.

Invariants: a :class:`LimitSpec` only holds non-negative integers or ``None`` (unlimited), so a
spec read back from JSON is as valid as one built in code; every value here is frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum


class LimitKind(StrEnum):
    """One kind of limit; the value is how messages name it."""

    REQUESTS_PER_MINUTE = "requests per minute"
    TOKENS_PER_MINUTE = "tokens per minute"
    CONCURRENT_REQUESTS = "concurrent requests"
    TOKENS_PER_DAY = "tokens per day"
    TOKENS_PER_MONTH = "tokens per month"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The limits of one key or tenant; ``None`` means unlimited, ``0`` refuses everything.

    Tokens count prompt plus completion. Minute limits use fixed windows (``floor(t / 60)``), the
    day and month quotas UTC calendar days and months.
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_limit(f.name, getattr(self, f.name))

    @property
    def is_unlimited(self) -> bool:
        """True when no limit is set at all."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def to_dict(self) -> dict[str, int]:
        """The limits that are set, as a JSON-ready dict (unlimited ones are left out)."""
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LimitSpec:
        """Parse a dict from :meth:`to_dict` (missing or ``null`` = unlimited).

        Strict: an unknown key, a value that is not an integer, or a negative value raises
        ``ValueError`` naming the offending key.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"rate limits must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(
                f"unknown rate-limit field(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        values: dict[str, int | None] = {}
        for name, value in data.items():
            _check_limit(name, value)
            values[name] = value  # type: ignore[assignment]  # checked just above
        return cls(**values)


def _check_limit(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"rate limit {name} must be an integer or null, got {value!r}")
    if value < 0:
        raise ValueError(f"rate limit {name} must not be negative, got {value}")


@dataclass(frozen=True, slots=True)
class LimitScope:
    """A spec applied to one subject, e.g. ``key:key_abc`` or ``tenant:ten_x``.

    ``name`` keys the counters (so it must be stable and unique per subject); ``label`` is how
    error messages name the subject, e.g. ``key sk-agl-abc…`` (default: ``name`` with its first
    colon turned into a space).
    """

    name: str
    spec: LimitSpec
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a limit scope needs a name")

    @property
    def display_name(self) -> str:
        """How messages name this scope."""
        return self.label or self.name.replace(":", " ", 1)


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """One limit as OpenAI's headers show it: ``remaining`` never below 0."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class RateLimitStatus:
    """Requests and tokens per minute of the most constraining scope; ``None`` = no such limit."""

    requests: LimitUsage | None = None
    tokens: LimitUsage | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """What ``acquire`` grants and ``settle`` gives back.

    ``token_counters`` are the counter keys (one per token window of each scope) charged with
    ``reserved_tokens``; ``concurrency_scopes`` the scopes in which a concurrency slot was taken.
    ``issuer`` names the limiter that granted it, so a wrapper settles it with the same one.
    """

    id: str
    scopes: tuple[LimitScope, ...]
    reserved_tokens: int
    token_counters: tuple[str, ...]
    concurrency_scopes: tuple[str, ...]
    status: RateLimitStatus
    issuer: str

    @property
    def took_concurrency_slot(self) -> bool:
        """True when settling must release at least one concurrency slot."""
        return bool(self.concurrency_scopes)
