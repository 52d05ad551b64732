"""The Redis adapter: every replica shares one set of counters, so N replicas enforce one limit.

Invariants: each ``acquire`` is one Lua script (EVALSHA, loaded on first use by redis-py's
``register_script``) that reads every counter of the plan and then increments all or none, so
concurrent replicas can never both take the last unit; each ``settle`` is one script that first
deletes the lease's record, so only the first settle of a lease changes anything. Time comes from
the injected clock (passed into the scripts as an argument, never Redis ``TIME``), and every key
is given a relative TTL: windows vanish a minute after they end, concurrency sets
``lease_ttl_s`` after their newest lease, lease records after a day.

Keys (under ``key_prefix``): ``<scope>:rpm:<minute>``, ``<scope>:tpm:<minute>``,
``<scope>:tpd:<YYYY-MM-DD>``, ``<scope>:tpmo:<YYYY-MM>`` (integers), ``<scope>:conc`` (a sorted set
of lease ids scored by expiry time) and ``lease:<id>``. One request touches several scopes' keys
in one script, so Redis Cluster is not supported (use a single primary, with replicas for HA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from redis.asyncio import Redis

from openautoglm.core.clock import Clock
from openautoglm.core.ids import RequestIds
from openautoglm.limits.checks import (
    KEY_MARGIN_S,
    LEASE_RECORD_TTL_S,
    concurrency_key,
    grant,
    plan_checks,
    refusal,
)
from openautoglm.limits.model import Lease, LimitScope
from openautoglm.limits.ports import DEFAULT_LEASE_TTL_S

DEFAULT_KEY_PREFIX = "autoglm:rl:"

# KEYS[1] = lease record, KEYS[2..] = one key per check.
# ARGV: now_s, lease id, record ttl (ms), slot expiry (s), then per check: kind ('c' counter or
# 'z' concurrency set), limit, amount, ttl (ms).
# Returns {1, values...} when granted (values read before consuming) or {0, values...}.
ACQUIRE_LUA = """
local now = ARGV[1]
local n = #KEYS - 1
local values = {}
local ok = 1
for i = 1, n do
  local key = KEYS[i + 1]
  local base = 4 + (i - 1) * 4
  local value
  if ARGV[base + 1] == 'z' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    value = redis.call('ZCARD', key)
  else
    value = tonumber(redis.call('GET', key) or '0')
  end
  values[i] = value
  if value + tonumber(ARGV[base + 3]) > tonumber(ARGV[base + 2]) then
    ok = 0
  end
end
if ok == 1 then
  for i = 1, n do
    local key = KEYS[i + 1]
    local base = 4 + (i - 1) * 4
    if ARGV[base + 1] == 'z' then
      redis.call('ZADD', key, ARGV[4], ARGV[2])
    else
      redis.call('INCRBY', key, ARGV[base + 3])
    end
    redis.call('PEXPIRE', key, ARGV[base + 4])
  end
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
end
table.insert(values, 1, ok)
return values
"""

# KEYS[1] = lease record, then ARGV[3] token counters, then concurrency sets.
# ARGV: token delta (used - reserved), lease id, number of token counters.
# Counters that expired stay gone; INCRBY keeps a key's TTL, so clamping at 0 keeps it too.
SETTLE_LUA = """
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
local delta = tonumber(ARGV[1])
local num_counters = tonumber(ARGV[3])
for i = 2, num_counters + 1 do
  if delta ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    local value = redis.call('INCRBY', KEYS[i], delta)
    if value < 0 then
      redis.call('INCRBY', KEYS[i], -value)
    end
  end
end
for i = num_counters + 2, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[2])
end
return 1
"""


class ScriptClient(Protocol):
    """What the limiter needs of a Redis client: redis-py's ``Redis`` or ``resp.LeanRedis``."""

    def register_script(self, script: str) -> Any: ...

    async def aclose(self) -> None: ...


class RedisRateLimiter:
    """Counters in Redis, shared by every replica that uses the same ``key_prefix``.

    Raises ``redis.exceptions.ConnectionError`` / ``TimeoutError`` when Redis is unreachable;
    :class:`~openautoglm.limits.fallback.FallbackRateLimiter` turns that into a local fallback.
    ``owns_client``: ``close()`` also closes ``redis``.
    """

    def __init__(
        self,
        redis: ScriptClient | Redis,
        clock: Clock,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        name: str = "redis",
        owns_client: bool = False,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._prefix = key_prefix
        self._lease_ttl_s = lease_ttl_s
        self._name = name
        self._owns_client = owns_client
        self._ids = RequestIds()
        self._acquire_script = redis.register_script(ACQUIRE_LUA)
        self._settle_script = redis.register_script(SETTLE_LUA)

    @property
    def name(self) -> str:
        """Names this limiter in the leases it grants."""
        return self._name

    async def acquire(self, scopes: Sequence[LimitScope], reserve_tokens: int) -> Lease:
        """See :meth:`~openautoglm.limits.ports.RateLimiter.acquire`: one script round trip.

        A request with no limits at all is granted without touching Redis.
        """
        plan = plan_checks(scopes, reserve_tokens, self._clock.now(), self._lease_ttl_s)
        lease_id = self._ids.next()
        if not plan.checks:
            return grant(plan, [], lease_id, self._name)
        keys = [self._lease_key(lease_id)] + [self._prefix + check.key for check in plan.checks]
        args: list[str | int] = [
            _seconds(plan.now_s),
            lease_id,
            _ms(LEASE_RECORD_TTL_S),
            _seconds(plan.now_s + self._lease_ttl_s),
        ]
        for check in plan.checks:
            ttl_s = check.ttl_s + KEY_MARGIN_S if check.is_slot else check.ttl_s
            args += ["z" if check.is_slot else "c", check.limit, check.amount, _ms(ttl_s)]
        reply = await self._acquire_script(keys=keys, args=args)
        is_granted, values = int(reply[0]) == 1, [int(v) for v in reply[1:]]
        error = refusal(plan, values)
        if is_granted != (error is None):  # the script and checks.is_exceeded disagree: a bug
            raise RuntimeError(f"rate-limit script and checks disagree on {values}")
        if error is not None:
            raise error
        return grant(plan, values, lease_id, self._name)

    async def settle(self, lease: Lease, used_tokens: int) -> None:
        """See :meth:`~openautoglm.limits.ports.RateLimiter.settle`: one script round trip."""
        if used_tokens < 0:
            raise ValueError(f"used_tokens must not be negative, got {used_tokens}")
        if not lease.token_counters and not lease.concurrency_scopes:
            return
        keys = [
            self._lease_key(lease.id),
            *(self._prefix + key for key in lease.token_counters),
            *(self._prefix + concurrency_key(name) for name in lease.concurrency_scopes),
        ]
        args: list[str | int] = [
            used_tokens - lease.reserved_tokens,
            lease.id,
            len(lease.token_counters),
        ]
        await self._settle_script(keys=keys, args=args)

    async def close(self) -> None:
        """Close the Redis client if this limiter owns it."""
        if self._owns_client:
            await self._redis.aclose()

    def _lease_key(self, lease_id: str) -> str:
        return f"{self._prefix}lease:{lease_id}"


def _seconds(value_s: float) -> str:
    return f"{value_s:.6f}"


def _ms(value_s: float) -> int:
    return max(1, round(value_s * 1000))
