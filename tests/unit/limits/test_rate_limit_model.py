"""Limit specs as stored JSON, scopes, fixed windows and OpenAI's rate-limit headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from openautoglm.limits import (
    LimitScope,
    LimitSpec,
    LimitUsage,
    RateLimitStatus,
    format_duration,
    ratelimit_headers,
)
from openautoglm.limits.windows import current_windows


def test_a_spec_round_trips_through_json() -> None:
    spec = LimitSpec(requests_per_minute=60, tokens_per_minute=0, tokens_per_month=10**9)
    stored = json.dumps(spec.to_dict())
    assert json.loads(stored) == {
        "requests_per_minute": 60,
        "tokens_per_minute": 0,
        "tokens_per_month": 1_000_000_000,
    }
    assert LimitSpec.from_dict(json.loads(stored)) == spec
    assert LimitSpec.from_dict({}) == LimitSpec() and LimitSpec().is_unlimited
    assert LimitSpec.from_dict({"max_concurrent": None}) == LimitSpec()
    assert not spec.is_unlimited


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"requests_per_minute": 1, "rpm": 5}, "unknown rate-limit field(s) rpm"),
        ({"tokens_per_day": -1}, "tokens_per_day must not be negative, got -1"),
        ({"max_concurrent": "5"}, "max_concurrent must be an integer or null, got '5'"),
        ({"max_concurrent": 2.5}, "must be an integer or null"),
        ({"max_concurrent": True}, "must be an integer or null, got True"),
    ],
)
def test_from_dict_is_strict(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LimitSpec.from_dict(data)


def test_a_spec_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match="requests_per_minute must not be negative"):
        LimitSpec(requests_per_minute=-5)
    with pytest.raises(ValueError, match="needs a name"):
        LimitScope("", LimitSpec())


def test_scopes_have_a_display_name() -> None:
    assert LimitScope("key:key_abc", LimitSpec()).display_name == "key key_abc"
    assert LimitScope("key:k", LimitSpec(), label="key sk-agl-abc…").display_name == (
        "key sk-agl-abc…"
    )


def test_windows_are_fixed_utc_minutes_days_and_months() -> None:
    w = current_windows(datetime(2026, 12, 31, 23, 59, 30, 500000, tzinfo=UTC))
    end_of_year = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert w.minute_ends_s == w.day_ends_s == w.month_ends_s == end_of_year
    assert (w.day_id, w.month_id) == ("2026-12-31", "2026-12")
    assert w.minute_ends_s - w.now_s == 29.5
    local = current_windows(datetime(2027, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))))
    assert (local.day_id, local.month_id) == ("2026-12-31", "2026-12")  # 23:00 UTC
    feb = current_windows(datetime(2028, 2, 29, 0, 0, tzinfo=UTC))
    assert feb.month_ends_s == datetime(2028, 3, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.0004, "0s"),
        (0.012, "12ms"),
        (0.9996, "1s"),
        (1, "1s"),
        (8.64, "8.64s"),
        (59.5, "59.5s"),
        (60, "1m0s"),
        (86.4, "1m26.4s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
        (86_400, "24h0m0s"),
    ],
)
def test_durations_use_openai_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_headers_cover_the_limits_that_exist() -> None:
    status = RateLimitStatus(
        requests=LimitUsage(limit=60, remaining=59, reset_s=1.0),
        tokens=LimitUsage(limit=150_000, remaining=149_984, reset_s=360.0),
    )
    assert ratelimit_headers(status) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    only_requests = RateLimitStatus(requests=LimitUsage(limit=3, remaining=0, reset_s=0.5))
    assert ratelimit_headers(only_requests) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "500ms",
    }
    assert ratelimit_headers(RateLimitStatus()) == {}


def test_from_dict_wants_an_object() -> None:
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        LimitSpec.from_dict([("requests_per_minute", 1)])  # type: ignore[arg-type]
