"""The limits stage: reservations, and leases granted to requests that were cancelled meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from openautoglm.core.clock import ManualClock
from openautoglm.core.types import GenerationRequest, Message, SamplingParams
from openautoglm.gateway.limiting import DEFAULT_RESERVED_COMPLETION_TOKENS, RequestLimits
from openautoglm.limits.model import Lease, LimitScope
from openautoglm.limits.ports import InMemoryRateLimiter
from openautoglm.tenancy.model import Principal, Role


class SlowLimiter(InMemoryRateLimiter):
    """Grants only when the test says so, and records settlements."""

    def __init__(self) -> None:
        super().__init__(ManualClock())
        self.release = asyncio.Event()
        self.settled: list[tuple[str, int]] = []
        self.reserved: list[int] = []

    async def acquire(self, scopes: Sequence[LimitScope], reserve_tokens: int) -> Lease:
        await self.release.wait()
        self.reserved.append(reserve_tokens)
        return await super().acquire(scopes, reserve_tokens)

    async def settle(self, lease: Lease, used_tokens: int) -> None:
        self.settled.append((lease.id, used_tokens))
        await super().settle(lease, used_tokens)


PRINCIPAL = Principal(
    tenant_id="ten_a", key_id="key_a", role=Role.DEVELOPER, key_limits={"max_concurrent": 1}
)


def request(max_tokens: int | None) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        model="m",
        kind="chat",
        messages=(Message(role="user", content="hi"),),
        params=SamplingParams(max_tokens=max_tokens),
    )


@pytest.mark.parametrize(
    ("max_tokens", "reserved"), [(10, 17), (None, 7 + DEFAULT_RESERVED_COMPLETION_TOKENS)]
)
async def test_reserves_prompt_plus_max_tokens(max_tokens: int | None, reserved: int) -> None:
    limiter = SlowLimiter()
    limiter.release.set()
    lease = await RequestLimits(limiter).acquire(PRINCIPAL, request(max_tokens), prompt_tokens=7)
    assert lease is not None and limiter.reserved == [reserved]


async def test_no_limits_no_lease() -> None:
    unlimited = Principal(tenant_id="t", key_id="k", role=Role.DEVELOPER)
    assert await RequestLimits(SlowLimiter()).acquire(unlimited, request(5), 3) is None


async def test_a_lease_granted_after_its_request_was_cancelled_is_given_back() -> None:
    limiter = SlowLimiter()
    limits = RequestLimits(limiter)
    waiting = asyncio.ensure_future(limits.acquire(PRINCIPAL, request(5), 3))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    limiter.release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(limiter.settled) == 1 and limiter.settled[0][1] == 0
    # The concurrency slot (limit 1) is free again for the next request.
    assert await limits.acquire(PRINCIPAL, request(5), 3) is not None
