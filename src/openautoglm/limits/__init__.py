"""Rate limits and quotas per key and tenant: requests/min, tokens/min, concurrency, day, month.

Imports nothing of ours but ``openautoglm.core``. Start at :mod:`.ports` (the port and how to use
it), :mod:`.model` (the values) and :mod:`.checks` (the decision every backend shares).
"""

from openautoglm.limits.checks import RateLimitExceeded
from openautoglm.limits.factory import build_rate_limiter
from openautoglm.limits.fallback import FallbackRateLimiter
from openautoglm.limits.headers import format_duration, ratelimit_headers
from openautoglm.limits.model import (
    Lease,
    LimitKind,
    LimitScope,
    LimitSpec,
    LimitUsage,
    RateLimitStatus,
)
from openautoglm.limits.ports import InMemoryRateLimiter, RateLimiter
from openautoglm.limits.redis_limiter import RedisRateLimiter

__all__ = [
    "FallbackRateLimiter",
    "InMemoryRateLimiter",
    "Lease",
    "LimitKind",
    "LimitScope",
    "LimitSpec",
    "LimitUsage",
    "RateLimitExceeded",
    "RateLimitStatus",
    "RateLimiter",
    "RedisRateLimiter",
    "build_rate_limiter",
    "format_duration",
    "ratelimit_headers",
]
