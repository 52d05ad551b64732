"""One contract for every ``ContextStore``: in memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.support.databases import database_url

from openautoglm.contexts.model import Context, NewTurn, Turn
from openautoglm.contexts.ports import ContextStore, InMemoryContextStore
from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import ConflictError, InvalidRequestError, NotFoundError
from openautoglm.store.contexts_sql import SqlContextStore
from openautoglm.store.database import create_engine, open_database


@dataclass
class Backend:
    """The store under test, and a way to get a second replica's view of the same data."""

    store: ContextStore
    url: str | None = None
    engines: list[AsyncEngine] = field(default_factory=list)

    def replica(self) -> ContextStore:
        if self.url is None:
            return self.store
        engine = create_engine(self.url)
        self.engines.append(engine)
        return SqlContextStore(engine)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield Backend(InMemoryContextStore())
        return
    async with database_url(request.param, tmp_path) as url:
        engine = await open_database(url)
        backend = Backend(SqlContextStore(engine), url, [engine])
        try:
            yield backend
        finally:
            for each in backend.engines:
                await each.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_context(
    clock: ManualClock, context_id: str, tenant_id: str = "ten_a", **changes: object
) -> Context:
    now = clock.now()
    fields: dict[str, object] = {"created_at": now, "updated_at": now, **changes}
    ttl_s = fields.get("ttl_s")
    if isinstance(ttl_s, int):
        fields["expires_at"] = now + timedelta(seconds=ttl_s)
    return Context(id=context_id, tenant_id=tenant_id, **fields)  # type: ignore[arg-type]


def pair(n: int) -> list[NewTurn]:
    return [
        NewTurn("user", f"question {n}", 2, f"req_{n}"),
        NewTurn("assistant", f"answer {n}", 2, f"req_{n}"),
    ]


async def test_contexts_round_trip_with_every_field(backend: Backend, clock: ManualClock) -> None:
    store = backend.store
    context = make_context(
        clock,
        "chat:42_a.b-c",
        title="Trip planning",
        labels={"team": "ml", "env": "prod"},
        system_prompt="You are terse.",
        max_turns=10,
        ttl_s=3600,
    )
    await store.create(context)
    assert await store.get("ten_a", "chat:42_a.b-c", now=clock.now()) == context
    assert await store.get("ten_a", "nope", now=clock.now()) is None
    assert await store.turns("ten_a", "chat:42_a.b-c", now=clock.now()) == []
    with pytest.raises(ConflictError):
        await store.create(make_context(clock, "chat:42_a.b-c"))


async def test_tenants_never_see_each_other(backend: Backend, clock: ManualClock) -> None:
    store, now = backend.store, clock.now()
    await store.create(make_context(clock, "same", "ten_a", title="A's"))
    await store.append_turns("ten_a", "same", pair(1), now)
    assert await store.get("ten_b", "same", now=now) is None
    assert (await store.list("ten_b", now=now)).items == ()
    assert await store.turns("ten_b", "same", now=now) == []
    with pytest.raises(NotFoundError):
        await store.append_turns("ten_b", "same", pair(2), now)
    assert await store.delete("ten_b", "same", now=now) is False

    await store.create(make_context(clock, "same", "ten_b", title="B's"))  # no conflict
    await store.append_turns("ten_b", "same", [NewTurn("user", "only B", None, None)], now)
    assert [t.content for t in await store.turns("ten_a", "same", now=now)] == [
        "question 1",
        "answer 1",
    ]
    assert [t.seq for t in await store.turns("ten_b", "same", now=now)] == [1]
    assert await store.delete("ten_b", "same", now=now) is True
    a_context = await store.get("ten_a", "same", now=now)
    assert a_context is not None and a_context.title == "A's" and a_context.num_turns == 2


async def test_pages_are_newest_first_and_stable_under_inserts(
    backend: Backend, clock: ManualClock
) -> None:
    store = backend.store
    for n in range(5):
        await store.create(make_context(clock, f"c{n}"))
        clock.advance(1)
    await store.create(make_context(clock, "tie-a"))  # same created_at: ordered by id
    await store.create(make_context(clock, "tie-b"))
    clock.advance(1)
    seen: list[str] = []
    page = await store.list("ten_a", now=clock.now(), limit=2)
    while True:
        seen += [c.id for c in page.items]
        await store.create(make_context(clock, f"new{len(seen)}"))  # lands before the cursor
        clock.advance(1)
        if page.next_cursor is None:
            break
        page = await store.list("ten_a", now=clock.now(), limit=2, cursor=page.next_cursor)
    assert seen == ["tie-b", "tie-a", "c4", "c3", "c2", "c1", "c0"]
    with pytest.raises(InvalidRequestError):
        await store.list("ten_a", now=clock.now(), cursor="not a cursor")


async def test_label_filter_matches_exactly(backend: Backend, clock: ManualClock) -> None:
    store = backend.store
    labelled = {
        "a": {"env": "prod", "team": "ml"},
        "b": {"env": "Prod"},  # case matters
        "c": {"env": "prod"},
        "d": {"env": "pro%", "team": "m_"},  # LIKE wildcards are literal
        "e": {"team": "ml", "x": '"env": "prod"'},  # the pair as a value is not the pair
        "f": {},
    }
    for context_id, labels in labelled.items():
        await store.create(make_context(clock, context_id, labels=labels))
        clock.advance(1)
    now = clock.now()

    async def ids(labels: dict[str, str], limit: int = 1) -> list[str]:
        found: list[str] = []
        page = await store.list("ten_a", now=now, limit=limit, labels=labels)
        found += [c.id for c in page.items]
        while page.next_cursor is not None:
            page = await store.list(
                "ten_a", now=now, limit=limit, cursor=page.next_cursor, labels=labels
            )
            found += [c.id for c in page.items]
        return found

    assert await ids({"env": "prod"}) == ["c", "a"]
    assert await ids({"env": "prod", "team": "ml"}) == ["a"]
    assert await ids({"env": "pro%", "team": "m_"}) == ["d"]
    assert await ids({"env": "pro_"}) == []
    assert await ids({}, limit=4) == ["f", "e", "d", "c", "b", "a"]


async def test_ttl_slides_on_append_and_expired_contexts_are_absent(
    backend: Backend, clock: ManualClock
) -> None:
    store = backend.store
    await store.create(make_context(clock, "short", ttl_s=60))
    await store.create(make_context(clock, "forever"))
    clock.advance(59)
    await store.append_turns("ten_a", "short", pair(1), clock.now())
    clock.advance(59)  # 118 s after creation, 59 s after the last turn
    context = await store.get("ten_a", "short", now=clock.now())
    assert context is not None and context.expires_at == clock.now() + timedelta(seconds=1)
    assert context.updated_at == clock.now() - timedelta(seconds=59)
    clock.advance(1)
    now = clock.now()
    assert await store.get("ten_a", "short", now=now) is None
    assert [c.id for c in (await store.list("ten_a", now=now)).items] == ["forever"]
    assert await store.turns("ten_a", "short", now=now) == []
    with pytest.raises(NotFoundError):
        await store.append_turns("ten_a", "short", pair(2), now)

    await store.create(make_context(clock, "short", ttl_s=60))  # replaces the expired one
    assert await store.turns("ten_a", "short", now=now) == []
    assert [t.seq for t in await store.append_turns("ten_a", "short", pair(3), now)] == [1, 2]
    clock.advance(60)
    assert await store.purge_expired(clock.now()) == 1
    assert await store.purge_expired(clock.now()) == 0
    assert await store.get("ten_a", "forever", now=clock.now()) is not None


async def test_trimming_to_max_turns_drops_whole_exchanges(
    backend: Backend, clock: ManualClock
) -> None:
    store, now = backend.store, clock.now()
    await store.create(make_context(clock, "capped", max_turns=5))
    for n in range(1, 4):
        await store.append_turns("ten_a", "capped", pair(n), now)
    turns = await store.turns("ten_a", "capped", now=now)
    assert [(t.seq, t.role) for t in turns] == [
        (3, "user"),
        (4, "assistant"),
        (5, "user"),
        (6, "assistant"),
    ]
    tool_exchange = [*pair(4), NewTurn("tool", "result", 1, "req_4")]
    added = await store.append_turns("ten_a", "capped", tool_exchange, now)
    assert [t.seq for t in added] == [7, 8, 9]
    assert [t.seq for t in await store.turns("ten_a", "capped", now=now)] == [5, 6, 7, 8, 9]
    context = await store.get("ten_a", "capped", now=now)
    assert context is not None and context.num_turns == 5

    await store.create(make_context(clock, "tiny", max_turns=1))
    await store.append_turns("ten_a", "tiny", pair(1), now)
    await store.append_turns("ten_a", "tiny", pair(2), now)  # the newest pair is kept whole
    assert [t.seq for t in await store.turns("ten_a", "tiny", now=now)] == [3, 4]


async def test_delete_removes_turns_and_a_new_context_starts_afresh(
    backend: Backend, clock: ManualClock
) -> None:
    store, now = backend.store, clock.now()
    await store.create(make_context(clock, "c"))
    await store.append_turns("ten_a", "c", pair(1), now)
    assert await store.delete("ten_a", "c", now=now) is True
    assert await store.delete("ten_a", "c", now=now) is False
    assert await store.get("ten_a", "c", now=now) is None
    await store.create(make_context(clock, "c"))
    assert await store.turns("ten_a", "c", now=now) == []
    assert [t.seq for t in await store.append_turns("ten_a", "c", pair(2), now)] == [1, 2]


async def test_appends_validate_their_turns(backend: Backend, clock: ManualClock) -> None:
    store, now = backend.store, clock.now()
    await store.create(make_context(clock, "c"))
    with pytest.raises(InvalidRequestError):
        await store.append_turns("ten_a", "c", [], now)
    with pytest.raises(InvalidRequestError):
        await store.append_turns("ten_a", "c", [("robot", "hi", None, None)], now)
    assert await store.turns("ten_a", "c", now=now) == []


def assert_pairs_adjacent(turns: list[Turn], num_pairs: int) -> None:
    assert [t.seq for t in turns] == list(range(1, 2 * num_pairs + 1))
    for user, answer in zip(turns[::2], turns[1::2], strict=True):
        assert (user.role, answer.role) == ("user", "assistant")
        assert user.request_id == answer.request_id
        assert user.content.split()[1] == answer.content.split()[1]
    assert len({t.request_id for t in turns}) == num_pairs


async def test_concurrent_appends_keep_pairs_adjacent(backend: Backend, clock: ManualClock) -> None:
    store, now = backend.store, clock.now()
    await store.create(make_context(clock, "busy"))
    results = await asyncio.gather(
        *(store.append_turns("ten_a", "busy", pair(n), now) for n in range(20))
    )
    assert all(added[1].seq == added[0].seq + 1 for added in results)
    assert_pairs_adjacent(await store.turns("ten_a", "busy", now=now), 20)
    context = await store.get("ten_a", "busy", now=now)
    assert context is not None and context.num_turns == 40


async def test_two_replicas_appending_at_once_keep_pairs_adjacent(
    backend: Backend, clock: ManualClock
) -> None:
    replica_a, replica_b = backend.replica(), backend.replica()
    now = clock.now()
    await replica_a.create(make_context(clock, "shared"))
    await asyncio.gather(
        *(
            (replica_a if n % 2 else replica_b).append_turns("ten_a", "shared", pair(n), now)
            for n in range(20)
        )
    )
    assert_pairs_adjacent(await backend.store.turns("ten_a", "shared", now=now), 20)
