"""OpenAI's ``x-ratelimit-*`` response headers from a :class:`RateLimitStatus`.

Resets use OpenAI's duration format (Go's ``time.Duration``): ``12ms``, ``1s``, ``59.5s``,
``6m0s``, ``1h2m3s``. Only limits that exist get headers.
"""

from __future__ import annotations

from openautoglm.limits.model import LimitUsage, RateLimitStatus


def ratelimit_headers(status: RateLimitStatus) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the limits that are set."""
    headers: dict[str, str] = {}
    for suffix, usage in (("requests", status.requests), ("tokens", status.tokens)):
        if usage is not None:
            headers.update(_usage_headers(suffix, usage))
    return headers


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it: ``0s``, ``250ms``, ``59.5s``, ``6m0s``, ``1h0m0s``."""
    total_ms = max(0, round(seconds * 1000))
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    whole_s, ms = divmod(rest_ms, 1000)
    secs = f"{whole_s}.{ms:03d}".rstrip("0") if ms else str(whole_s)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _usage_headers(suffix: str, usage: LimitUsage) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{suffix}": str(usage.limit),
        f"x-ratelimit-remaining-{suffix}": str(max(0, usage.remaining)),
        f"x-ratelimit-reset-{suffix}": format_duration(usage.reset_s),
    }
