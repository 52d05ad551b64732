"""A request cancelled in the middle of a database write must not wedge the database."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from tests.support.databases import database_url

from openautoglm.contexts.model import Context
from openautoglm.core.clock import ManualClock
from openautoglm.store.contexts_sql import SqlContextStore
from openautoglm.store.database import open_database


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_cancelled_appends_leave_the_store_usable(kind: str, tmp_path: Path) -> None:
    clock = ManualClock()
    async with database_url(kind, tmp_path) as url:
        engine = await open_database(url)
        try:
            store = SqlContextStore(engine)
            now = clock.now()
            for index in range(8):
                await store.create(
                    Context(
                        id=f"c{index}", tenant_id="t", created_at=now, updated_at=now, max_turns=4
                    )
                )
            pair = [("user", "q", None, None), ("assistant", "a", None, None)]
            rng = random.Random(7)
            for _ in range(30):
                writers = [
                    asyncio.ensure_future(store.append_turns("t", f"c{i}", pair, now))
                    for i in range(8)
                ]
                await asyncio.sleep(rng.random() * 0.01)  # cancel wherever the writes are
                for writer in writers:
                    writer.cancel()
                await asyncio.gather(*writers, return_exceptions=True)
            # A wedged write lock would make this wait out SQLite's 5 s busy timeout and fail.
            await asyncio.wait_for(store.append_turns("t", "c0", pair, now), timeout=8)
            turns = await store.turns("t", "c0", now=now)
            seqs = [t.seq for t in turns]
            assert len(turns) == 4 and seqs == list(range(seqs[0], seqs[0] + 4))
            assert [t.role for t in turns] == ["user", "assistant"] * (len(turns) // 2)
        finally:
            await engine.dispose()
