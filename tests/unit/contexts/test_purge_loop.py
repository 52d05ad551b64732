"""The housekeeping loop that deletes expired contexts."""

from __future__ import annotations

import asyncio
from datetime import datetime

from openautoglm.contexts.ports import InMemoryContextStore
from openautoglm.contexts.service import ContextService, ContextSettings
from openautoglm.core.clock import ManualClock
from openautoglm.services import purge_expired_contexts


class CountingStore(InMemoryContextStore):
    def __init__(self) -> None:
        super().__init__()
        self.purged = 0

    async def purge_expired(self, now: datetime) -> int:
        count = await super().purge_expired(now)
        self.purged += count
        return count


async def test_expired_contexts_are_purged_by_the_loop() -> None:
    clock, store = ManualClock(), CountingStore()
    service = ContextService(store, clock, ContextSettings(default_ttl_s=60))
    await service.create("ten_a", "old")
    await service.create("ten_a", "young", ttl_s=3600)
    clock.advance(120)
    loop = asyncio.ensure_future(purge_expired_contexts(service, None, interval_s=0.001))
    try:
        for _ in range(500):
            if store.purged:
                break
            await asyncio.sleep(0.002)
    finally:
        loop.cancel()
    assert store.purged == 1
    assert [c.id for c in (await service.list("ten_a")).items] == ["young"]
