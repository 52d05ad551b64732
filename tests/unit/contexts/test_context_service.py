"""The context service: defaults, 404 codes, open-on-first-use, and the per-context lock."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from openautoglm.contexts.model import Context, NewTurn, validate_context_id
from openautoglm.contexts.ports import InMemoryContextStore
from openautoglm.contexts.service import ContextService, ContextSettings
from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import ConflictError, InvalidRequestError, NotFoundError


def make_service(**settings: object) -> tuple[ContextService, InMemoryContextStore, ManualClock]:
    store, clock = InMemoryContextStore(), ManualClock()
    return ContextService(store, clock, ContextSettings(**settings)), store, clock  # type: ignore[arg-type]


async def test_create_applies_the_defaults_unless_overridden() -> None:
    service, _, clock = make_service(default_ttl_s=60, default_max_turns=10)
    context = await service.create("ten_a", "c1", title="t", labels={"env": "dev"})
    assert (context.ttl_s, context.max_turns) == (60, 10)
    assert context.expires_at is not None and (context.expires_at - clock.now()).seconds == 60
    unlimited = await service.create("ten_a", "c2", ttl_s=None, max_turns=None)
    assert (unlimited.ttl_s, unlimited.max_turns, unlimited.expires_at) == (None, None, None)
    generated = await service.create("ten_a")
    assert generated.id.startswith("ctx_") and validate_context_id(generated.id)
    assert await service.get("ten_a", "c1") == context
    with pytest.raises(ConflictError):
        await service.create("ten_a", "c1")


@pytest.mark.parametrize("bad", ["", "has space", "slash/no", "é", "x" * 201])
async def test_bad_context_ids_are_refused(bad: str) -> None:
    service, _, _ = make_service()
    with pytest.raises(InvalidRequestError) as caught:
        await service.open_for_request("ten_a", bad)
    assert caught.value.code == "invalid_context_id"


async def test_the_id_length_limit_comes_from_the_settings() -> None:
    service, _, _ = make_service(max_context_id_len=8)
    await service.create("ten_a", "x" * 8)
    with pytest.raises(InvalidRequestError):
        await service.create("ten_a", "x" * 9)


@pytest.mark.parametrize(
    "changes",
    [{"max_turns": 0}, {"ttl_s": 0}, {"labels": {"bad key": "v"}}, {"title": "t" * 257}],
)
async def test_bad_fields_are_refused(changes: dict[str, object]) -> None:
    service, _, _ = make_service()
    with pytest.raises(InvalidRequestError):
        await service.create("ten_a", "c", **changes)  # type: ignore[arg-type]


async def test_absent_and_foreign_contexts_are_404_context_not_found() -> None:
    service, _, _ = make_service()
    await service.create("ten_a", "mine")
    for call in (
        service.get("ten_b", "mine"),
        service.get("ten_a", "nope"),
        service.delete("ten_b", "mine"),
        service.turns("ten_b", "mine"),
        service.append_turns("ten_b", "mine", [NewTurn("user", "hi")]),
    ):
        with pytest.raises(NotFoundError) as caught:
            await call
        assert (caught.value.status, caught.value.code) == (404, "context_not_found")
    await service.delete("ten_a", "mine")
    with pytest.raises(NotFoundError):
        await service.get("ten_a", "mine")


async def test_open_for_request_creates_on_first_use() -> None:
    service, _, _ = make_service()
    contexts = await asyncio.gather(*(service.open_for_request("ten_a", "chat") for _ in range(5)))
    assert len({(c.id, c.created_at) for c in contexts}) == 1
    assert contexts[0].max_turns == 200 and contexts[0].ttl_s == 7 * 24 * 3600
    await service.append_turns("ten_a", "chat", [NewTurn("user", "q"), NewTurn("assistant", "a")])
    again = await service.open_for_request("ten_a", "chat")
    assert again.num_turns == 2
    assert [t.role for t in await service.turns("ten_a", "chat")] == ["user", "assistant"]
    assert len((await service.list("ten_a")).items) == 1


class SlowReadStore(InMemoryContextStore):
    """Yields to the event loop after reading, as a real store does, so callers can race."""

    async def get(self, tenant_id: str, context_id: str, *, now: datetime) -> Context | None:
        found = await super().get(tenant_id, context_id, now=now)
        await asyncio.sleep(0)
        return found


async def test_callers_racing_to_create_on_first_use_all_get_the_same_context() -> None:
    store = SlowReadStore()
    service = ContextService(store, ManualClock())
    contexts = await asyncio.gather(*(service.open_for_request("ten_a", "chat") for _ in range(5)))
    assert all(c == contexts[0] for c in contexts)
    assert len((await service.list("ten_a")).items) == 1


async def test_open_for_request_without_create_on_first_use_is_404() -> None:
    service, _, _ = make_service(create_on_first_use=False)
    with pytest.raises(NotFoundError) as caught:
        await service.open_for_request("ten_a", "chat")
    assert caught.value.code == "context_not_found"
    await service.create("ten_a", "chat")
    assert (await service.open_for_request("ten_a", "chat")).id == "chat"


async def test_expiry_and_purge_follow_the_clock() -> None:
    service, _, clock = make_service(default_ttl_s=10)
    await service.create("ten_a", "c")
    clock.advance(10)
    with pytest.raises(NotFoundError):
        await service.get("ten_a", "c")
    assert await service.purge_expired() == 1


async def test_list_limits_are_checked() -> None:
    service, _, _ = make_service()
    for limit in (0, 101):
        with pytest.raises(InvalidRequestError):
            await service.list("ten_a", limit=limit)


async def test_turn_lock_serialises_in_arrival_order_and_is_cleaned_up() -> None:
    service, _, _ = make_service()
    entered: list[int] = []
    release = asyncio.Event()

    async def call(n: int) -> None:
        async with service.turn_lock("ten_a", "c"):
            entered.append(n)
            if n == 0:
                await release.wait()

    first = asyncio.create_task(call(0))
    await asyncio.sleep(0)  # yield so the first holds the lock before the others queue
    waiters = [asyncio.create_task(call(n)) for n in range(1, 4)]
    await asyncio.sleep(0)
    assert entered == [0] and service.num_locks == 1
    async with service.turn_lock("ten_a", "other"):  # another context is not blocked
        assert service.num_locks == 2
    release.set()
    await asyncio.gather(first, *waiters)
    assert entered == [0, 1, 2, 3]
    assert service.num_locks == 0


async def test_turn_lock_is_released_on_errors_and_cancellation() -> None:
    service, _, _ = make_service()
    with pytest.raises(RuntimeError):
        async with service.turn_lock("ten_a", "c"):
            raise RuntimeError("boom")
    assert service.num_locks == 0

    async with service.turn_lock("ten_a", "c"):
        waiter = asyncio.create_task(_hold(service))
        await asyncio.sleep(0)
        assert service.num_locks == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert service.num_locks == 0


async def _hold(service: ContextService) -> None:
    async with service.turn_lock("ten_a", "c"):
        pass
