"""Policy stages of the gateway: streamed output equals the whole answer for every chunking,
blocked words never leave the gateway, the deadline cancels, and decisions reach the trace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.support.gateways import in_memory_gateway

from openautoglm.backends.echo import EchoBackend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import DeadlineExceededError
from openautoglm.core.types import Chunk, GenerationRequest, Message, SamplingParams, Usage
from openautoglm.gateway.pipeline import Gateway
from openautoglm.gateway.trace import CallTrace
from openautoglm.policy.engine import PolicyViolation
from openautoglm.policy.ports import GLOBAL_SCOPE, InMemoryPolicyStore
from openautoglm.policy.service import PolicyService
from openautoglm.routing.catalog import Instance, ServedModel
from openautoglm.tenancy.model import Principal, Role

POLICY = """\
rules:
  - id: no-gambling
    type: words
    words: ["赌博", "casino"]
    action: block
    apply_to: output
  - id: soft
    type: words
    words: ["敏感词", "darn"]
    action: mask
    apply_to: output
  - id: phones
    type: pii
    kinds: [mobile, id_card]
    action: mask
    apply_to: output
"""
PRINCIPAL = Principal(tenant_id="ten_a", key_id="key_a", role=Role.DEVELOPER)
ANSWERS = [
    "联系我 13812345678 或 138-1234-5678，这是敏 感 词，darn it",
    "身份证 11010519491231002X 与订单 1381234567890123 无关",
    "Totally fine text with a DaRn and ＤＡＲＮ and d*a*r*n.",
    "今天先聊天气，然后聊赌 博的事情，再说别的",
    "an online c-a-s-i-n-o appears late in this answer",
]


class ChunkedBackend(EchoBackend):
    """Answers ``reply`` in chunks of ``size`` characters, slowly when told to."""

    def __init__(self, reply: str, size: int, delay_s: float = 0.0) -> None:
        super().__init__(InstanceConfig(backend="echo"))
        self.reply, self.size, self.delay_s = reply, size, delay_s

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        text = self.reply
        for start in range(0, len(text), self.size):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield Chunk(text=text[start : start + self.size])
        yield Chunk(finish_reason="stop", usage=Usage(3, len(text)))


async def gateway_for(backend: EchoBackend, policy: str = POLICY) -> Gateway:
    clock = ManualClock()
    instance = Instance("m", "default", backend, InstanceConfig(backend="echo"))
    policies = PolicyService(InMemoryPolicyStore(), clock)
    await policies.apply(GLOBAL_SCOPE, policy, "k")
    return in_memory_gateway([ServedModel("m", [instance])], clock, policies)


def ask(text: str = "hi", deadline_ms: int | None = None) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        model="m",
        kind="chat",
        messages=(Message(role="user", content=text),),
        params=SamplingParams(),
        deadline_ms=deadline_ms,
    )


async def streamed(gateway: Gateway, trace: CallTrace) -> tuple[list[str], str | None]:
    opened = await gateway.open_stream(PRINCIPAL, ask(), trace)
    pieces, finish = [opened.first.text], opened.first.finish_reason
    try:
        async for chunk in opened.rest:
            pieces.append(chunk.text)
            finish = chunk.finish_reason or finish
    finally:
        await opened.rest.aclose()
    return pieces, finish


@pytest.mark.parametrize("answer", ANSWERS)
async def test_streamed_output_equals_the_whole_answer_for_every_chunk_size(answer: str) -> None:
    whole = await (await gateway_for(ChunkedBackend(answer, len(answer)))).complete(
        PRINCIPAL, ask()
    )
    assert whole.completion.text != answer  # every sample triggers a rule
    for size in range(1, 9):
        trace = CallTrace("test")
        pieces, finish = await streamed(await gateway_for(ChunkedBackend(answer, size)), trace)
        assert "".join(pieces) == whole.completion.text, size
        assert finish == whole.completion.finish_reason, size
        for banned in ("赌博", "赌 博", "casino", "c-a-s-i-n-o", "13812345678", "darn", "敏 感 词"):
            if banned not in whole.completion.text:  # filtered out of the whole answer
                assert all(banned not in piece for piece in pieces), (size, banned)
        assert trace.decisions, size


async def test_a_blocked_answer_ends_before_the_word_with_content_filter() -> None:
    answer = ANSWERS[3]
    result = await (await gateway_for(ChunkedBackend(answer, 3))).complete(PRINCIPAL, ask())
    assert result.completion.finish_reason == "content_filter"
    assert result.completion.text == "今天先聊天气，然后聊"


async def test_output_decisions_are_on_the_trace() -> None:
    trace = CallTrace("test")
    await (await gateway_for(ChunkedBackend(ANSWERS[0], 4))).complete(PRINCIPAL, ask(), trace)
    assert {(d.rule, d.action, d.stage) for d in trace.decisions} == {
        ("phones", "mask", "output"),
        ("soft", "mask", "output"),
    }
    assert {"policy_output", "first_token", "generate", "context", "route"} <= set(trace.stages)


async def test_the_deadline_cancels_a_slow_answer() -> None:
    gateway = await gateway_for(ChunkedBackend("x" * 100, 1, delay_s=0.02))
    with pytest.raises(DeadlineExceededError):
        await gateway.complete(PRINCIPAL, ask(deadline_ms=100))
    assert gateway.catalog.get("m").instances[0].in_flight == 0


async def test_a_latency_budget_rule_sets_the_deadline() -> None:
    policy = "rules:\n  - id: fast\n    type: latency_budget\n    budget_ms: 100\n"
    gateway = await gateway_for(ChunkedBackend("y" * 100, 1, delay_s=0.02), policy)
    opened = await gateway.open_stream(PRINCIPAL, ask())
    with pytest.raises(DeadlineExceededError):
        async for _ in opened.rest:
            pass
    await opened.rest.aclose()


async def test_input_blocks_are_recorded_and_refused() -> None:
    policy = "rules:\n  - id: in\n    type: words\n    words: [secret]\n    apply_to: input\n"
    gateway = await gateway_for(ChunkedBackend("ok", 2), policy)
    trace = CallTrace("test")
    with pytest.raises(PolicyViolation) as caught:
        await gateway.complete(PRINCIPAL, ask("tell me the S E C R E T"), trace)
    assert caught.value.rule_id == "in" and caught.value.status == 400
    assert [d.as_dict() for d in trace.decisions] == [
        {"rule": "in", "action": "block", "stage": "input", "category": "default"}
    ]
