"""The queue stage in the gateway: slots per model, priority order, early refusals, release."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.support.gateways import in_memory_gateway

from openautoglm.backends.echo import EchoBackend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.clock import SystemClock
from openautoglm.core.errors import ServiceUnavailableError
from openautoglm.core.types import Chunk, GenerationRequest, Message, Usage
from openautoglm.gateway.pipeline import Gateway
from openautoglm.routing.catalog import Instance, ServedModel
from openautoglm.scheduling.scheduler import ModelScheduler, SchedulerSettings
from openautoglm.tenancy.model import Principal, Role

PRINCIPAL = Principal(tenant_id="ten_a", key_id="key_a", role=Role.DEVELOPER)


class GatedEcho(EchoBackend):
    """Answers only when the test opens the gate; records the order it served prompts in."""

    def __init__(self) -> None:
        super().__init__(InstanceConfig(backend="echo"))
        self.gate = asyncio.Event()
        self.served: list[str] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        await self.gate.wait()
        self.served.append(request.messages[-1].text)
        yield Chunk(text="ok", finish_reason="stop", usage=Usage(1, 1))


def build(max_queue: int = 10) -> tuple[Gateway, GatedEcho, ModelScheduler]:
    clock = SystemClock()
    backend = GatedEcho()
    config = InstanceConfig(backend="echo", max_concurrency=1)
    scheduler = ModelScheduler(1, clock, SchedulerSettings(max_queue=max_queue))
    model = ServedModel(
        "m", [Instance("m", "i", backend, config)], clock=clock, scheduler=scheduler
    )
    gateway = in_memory_gateway([model], clock)
    return gateway, backend, scheduler


def ask(text: str, priority: int | None = None) -> GenerationRequest:
    return GenerationRequest(
        request_id=text,
        model="m",
        kind="chat",
        messages=(Message(role="user", content=text),),
        priority=priority,
    )


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_waiting_calls_run_by_priority_and_slots_come_back() -> None:
    gateway, backend, scheduler = build()
    first = asyncio.ensure_future(gateway.complete(PRINCIPAL, ask("running")))
    await settle()
    waiting = [
        asyncio.ensure_future(gateway.complete(PRINCIPAL, ask(name, priority)))
        for name, priority in (("low", 9), ("mid", 5), ("high", 0))
    ]
    await settle()
    assert scheduler.depth == 3 and scheduler.in_flight == 1
    backend.gate.set()
    await asyncio.gather(first, *waiting)
    assert backend.served == ["running", "high", "mid", "low"]
    assert scheduler.in_flight == 0 and scheduler.depth == 0


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    gateway, backend, scheduler = build(max_queue=1)
    running = asyncio.ensure_future(gateway.complete(PRINCIPAL, ask("a")))
    queued = asyncio.ensure_future(gateway.complete(PRINCIPAL, ask("b")))
    await settle()
    with pytest.raises(ServiceUnavailableError) as caught:
        await gateway.complete(PRINCIPAL, ask("c"))
    assert caught.value.code == "queue_full" and caught.value.retry_after_s
    backend.gate.set()
    await asyncio.gather(running, queued)
    assert scheduler.in_flight == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_a_cancelled_stream_frees_its_slot() -> None:
    gateway, backend, scheduler = build()
    running = asyncio.ensure_future(gateway.complete(PRINCIPAL, ask("a")))
    waiter = asyncio.ensure_future(gateway.complete(PRINCIPAL, ask("b")))
    await settle()
    waiter.cancel()
    await settle()
    assert scheduler.depth == 0
    running.cancel()
    await settle()
    assert scheduler.in_flight == 0
    backend.gate.set()
    assert (await gateway.complete(PRINCIPAL, ask("c"))).completion.text == "ok"
