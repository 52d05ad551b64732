"""Failover in the gateway: breakers, retries on another instance before the first byte, the
retry budget, probes that let a recovered instance rejoin, and fallback models."""

from __future__ import annotations

from collections import Counter

import pytest
from tests.support.gateways import in_memory_gateway

from openautoglm.backends.echo import EchoBackend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import BackendFailure, InvalidRequestError
from openautoglm.core.types import GenerationRequest, Message, SamplingParams
from openautoglm.gateway.pipeline import Gateway
from openautoglm.routing.balancers import ConsistentHash
from openautoglm.routing.breaker import BreakerSettings, BreakerState
from openautoglm.routing.catalog import Instance, Resilience, ServedModel
from openautoglm.routing.health import probe_open_instances
from openautoglm.routing.retry_budget import RetryBudget
from openautoglm.tenancy.model import Principal, Role

PRINCIPAL = Principal(tenant_id="ten_a", key_id="key_a", role=Role.DEVELOPER)
BREAKER = BreakerSettings(consecutive_failures=3, cooldown_s=10, min_calls=1000)


class CountingEcho(EchoBackend):
    def __init__(self, name: str, fail_rate: float = 0.0) -> None:
        super().__init__(InstanceConfig(backend="echo", name=name, fail_rate=fail_rate))
        self.name = name
        self.calls = 0

    def heal(self) -> None:
        self._config = self._config.model_copy(update={"fail_rate": 0.0})

    async def generate(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        self.calls += 1
        async for chunk in super().generate(request):
            yield chunk


def model(
    name: str, backends: list[CountingEcho], clock: ManualClock, **extra: object
) -> ServedModel:
    instances = [
        Instance(name, backend.name, backend, InstanceConfig(backend="echo", name=backend.name))
        for backend in backends
    ]
    resilience = Resilience(breaker=BREAKER, **extra)  # type: ignore[arg-type]
    return ServedModel(name, instances, resilience=resilience, clock=clock, **{})


def gateway(*models: ServedModel, clock: ManualClock) -> Gateway:
    return in_memory_gateway(models, clock)


def ask(
    model_name: str, text: str = "hello there", context_id: str | None = None
) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        model=model_name,
        kind="chat",
        messages=(Message(role="user", content=text),),
        params=SamplingParams(),
        context_id=context_id,
    )


async def test_a_dead_instance_costs_no_client_errors_and_rejoins_after_it_recovers() -> None:
    clock = ManualClock()
    good_a, good_b, bad = CountingEcho("a"), CountingEcho("b"), CountingEcho("bad", 1.0)
    trio = model("trio", [good_a, good_b, bad], clock)
    service = gateway(trio, clock=clock)
    for _ in range(300):
        answer = await service.complete(PRINCIPAL, ask("trio"))
        assert answer.completion.text == "hello there"
    breaker = trio.instances[2].breaker
    assert breaker.state is BreakerState.OPEN
    assert bad.calls == 3  # opened after three failures, each retried elsewhere; then skipped
    # Still broken: after the cooldown one real call probes it, fails, is retried elsewhere.
    clock.advance(10)
    for _ in range(3):  # round robin reaches it within three calls
        assert (await service.complete(PRINCIPAL, ask("trio"))).completion.text == "hello there"
    assert bad.calls == 4 and breaker.state is BreakerState.OPEN
    # Healed: the active probe answers, the next call is the probe, and it rejoins.
    bad.heal()
    assert await probe_open_instances(service.catalog) == 1
    assert breaker.state is BreakerState.HALF_OPEN
    for _ in range(30):
        await service.complete(PRINCIPAL, ask("trio"))
    assert breaker.state is BreakerState.CLOSED
    assert 4 + 9 <= bad.calls <= 4 + 11  # its share of round robin again


async def test_retries_stop_when_the_budget_is_spent() -> None:
    clock = ManualClock()
    backends = [CountingEcho("x", 1.0), CountingEcho("y", 1.0)]
    pair = model("pair", backends, clock, retry_ratio=0.0, retry_min_per_s=0.1)  # 1 per 10 s
    for instance in pair.instances:
        instance.breaker = type(instance.breaker)(clock, BreakerSettings(consecutive_failures=99))
    service = gateway(pair, clock=clock)
    with pytest.raises(BackendFailure):
        await service.complete(PRINCIPAL, ask("pair"))
    assert sum(b.calls for b in backends) == 2  # one retry
    with pytest.raises(BackendFailure):
        await service.complete(PRINCIPAL, ask("pair"))
    assert sum(b.calls for b in backends) == 3  # budget spent: no retry


def test_the_retry_budget_allows_a_share_of_requests() -> None:
    clock = ManualClock()
    budget = RetryBudget(clock, ratio=0.2, min_per_s=0, window_s=10)
    for _ in range(100):
        budget.record_request()
    assert sum(budget.try_retry() for _ in range(50)) == 20
    clock.advance(11)
    assert not budget.try_retry()


async def test_a_failing_model_falls_back_in_order_by_error_class() -> None:
    clock = ManualClock()
    dead = model("dead", [CountingEcho("d", 1.0)], clock, fallbacks=("also-dead", "backup"))
    also_dead = model("also-dead", [CountingEcho("e", 1.0)], clock)
    backup_echo = CountingEcho("b")
    backup = model("backup", [backup_echo], clock)
    service = gateway(dead, also_dead, backup, clock=clock)
    answer = await service.complete(PRINCIPAL, ask("dead"))
    assert answer.instance.model == "backup" and answer.completion.text == "hello there"
    picky = model(
        "picky",
        [CountingEcho("p", 1.0)],
        clock,
        fallbacks=("backup",),
        fallback_on=frozenset({"upstream"}),
    )
    service = gateway(picky, backup, clock=clock)
    with pytest.raises(BackendFailure):  # a backend failure is not in its fallback_on
        await service.complete(PRINCIPAL, ask("picky"))


async def test_the_callers_own_errors_are_neither_retried_nor_fallen_back() -> None:
    clock = ManualClock()
    first = CountingEcho("a")
    solo = model("solo", [first, CountingEcho("b")], clock, fallbacks=("solo",))
    service = gateway(solo, clock=clock)
    bad = GenerationRequest(request_id="r", model="solo", kind="completion", prompt="hi")
    with pytest.raises(InvalidRequestError):
        await service.complete(PRINCIPAL, dataclass_replace(bad))


def dataclass_replace(request: GenerationRequest) -> GenerationRequest:
    # echo serves completions, so make the request invalid another way: images to a text model
    from openautoglm.core.types import ContentPart

    image = ContentPart(type="image_url", image_url="data:image/png;base64,AA==")
    return GenerationRequest(
        request_id="r",
        model=request.model,
        kind="chat",
        messages=(Message(role="user", content=(image,)),),
    )


async def test_consistent_hashing_keeps_a_conversation_on_one_instance() -> None:
    clock = ManualClock()
    backends = [CountingEcho(name) for name in "abc"]
    hashed = ServedModel(
        "hashed",
        [
            Instance("hashed", b.name, b, InstanceConfig(backend="echo", name=b.name))
            for b in backends
        ],
        balancer=ConsistentHash(),
        clock=clock,
    )
    service = gateway(hashed, clock=clock)
    seen: dict[str, set[str]] = {}
    for index in range(120):
        context = f"ctx-{index % 12}"
        answer = await service.complete(PRINCIPAL, ask("hashed", context_id=context))
        seen.setdefault(context, set()).add(answer.instance.name)
    assert all(len(names) == 1 for names in seen.values())
    assert len(Counter(next(iter(names)) for names in seen.values())) >= 2
