"""The policy service: apply, versions, hot reload across replicas, lockout."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from tests.support.databases import database_url

from openautoglm.core.clock import ManualClock
from openautoglm.core.types import GenerationRequest, Message, SamplingParams
from openautoglm.policy.engine import KeySuspended, PolicyViolation
from openautoglm.policy.ports import GLOBAL_SCOPE, InMemoryPolicyStore, PolicyStore
from openautoglm.policy.service import InvalidPolicy, PolicyService
from openautoglm.store.database import open_database
from openautoglm.store.policy_sql import SqlPolicyStore

BASE = """\
rules:
  - id: no-gambling
    type: words
    words: ["赌博"]
    category: gambling
"""
TENANT = """\
lockout: {violations: 2, window_s: 60, suspend_s: 600}
rules:
  - id: phones
    type: pii
    kinds: [mobile]
    action: mask
  - id: cap
    type: max_tokens
    limit: 50
"""


def chat(text: str, max_tokens: int | None = None) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        model="echo",
        kind="chat",
        messages=(Message(role="user", content=text),),
        params=SamplingParams(max_tokens=max_tokens),
    )


async def test_tenant_rules_add_to_global_ones() -> None:
    service = PolicyService(InMemoryPolicyStore(), ManualClock())
    await service.apply(GLOBAL_SCOPE, BASE, "k1")
    await service.apply("ten_a", TENANT, "k1")
    tenant = service.for_tenant("ten_a")
    verdict = tenant.check_input(chat("call 13812345678", max_tokens=500))
    assert verdict.request.messages[0].text == "call 138****5678"
    assert verdict.request.params.max_tokens == 50
    assert [d.rule for d in verdict.decisions] == ["cap", "phones"]
    with pytest.raises(PolicyViolation) as caught:
        tenant.check_input(chat("我们去赌博吧"))
    assert caught.value.rule_id == "no-gambling"
    assert "赌博" not in caught.value.message
    # another tenant only has the global rules
    other = service.for_tenant("ten_b")
    assert other.check_input(chat("call 13812345678")).request.messages[0].text.endswith("5678")
    assert other.check_input(chat("call 13812345678")).decisions == []


async def test_an_invalid_document_is_refused_and_the_previous_one_stays() -> None:
    service = PolicyService(InMemoryPolicyStore(), ManualClock())
    await service.apply(GLOBAL_SCOPE, BASE, "k1")
    with pytest.raises(InvalidPolicy) as caught:
        await service.apply(GLOBAL_SCOPE, "rules:\n  - id: x\n    type: words\n", "k1")
    assert caught.value.code == "invalid_policy"
    assert "line 2" in caught.value.message
    assert [v.version for v in await service.versions(GLOBAL_SCOPE)] == [1]
    with pytest.raises(PolicyViolation):
        service.for_tenant("t").check_input(chat("赌博"))


async def test_a_missing_library_is_refused(tmp_path: Path) -> None:
    service = PolicyService(InMemoryPolicyStore(), ManualClock(), libraries_dir=tmp_path)
    text = "rules:\n  - id: lib\n    type: words\n    library: nothing-here\n"
    with pytest.raises(InvalidPolicy, match="not found"):
        await service.apply(GLOBAL_SCOPE, text, "k1")
    (tmp_path / "banned.txt").write_text("# category: gambling\n赌场\ncasino\n", encoding="utf-8")
    text = "rules:\n  - id: lib\n    type: words\n    library: banned\n"
    await service.apply(GLOBAL_SCOPE, text, "k1")
    with pytest.raises(PolicyViolation):
        service.for_tenant("t").check_input(chat("a CASINO night"))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_second_replica_picks_up_changes_on_refresh(kind: str, tmp_path: Path) -> None:
    async with database_url(kind, tmp_path) as url:
        engine = await open_database(url)
        try:
            clock = ManualClock()
            first = PolicyService(SqlPolicyStore(engine), clock)
            second = PolicyService(SqlPolicyStore(engine), clock)
            await second.refresh()
            assert second.for_tenant("t").is_empty
            await first.apply(GLOBAL_SCOPE, BASE, "k1", comment="first")
            assert second.for_tenant("t").is_empty  # not yet reloaded
            await second.refresh()
            with pytest.raises(PolicyViolation):
                second.for_tenant("t").check_input(chat("赌博"))
            await first.withdraw(GLOBAL_SCOPE, "k1")
            await second.refresh()
            assert second.for_tenant("t").is_empty
            history = await second.versions(GLOBAL_SCOPE)
            assert [(v.version, v.document is None) for v in history] == [(2, True), (1, False)]
            assert history[1].comment == "first" and history[1].digest is not None
        finally:
            await engine.dispose()


async def _suspends_after_violations(store: PolicyStore) -> None:
    clock = ManualClock()
    service = PolicyService(store, clock)
    await service.apply("ten_a", TENANT, "k1")
    assert await service.record_violation("ten_a", "key1", "phones") is None
    suspension = await service.record_violation("ten_a", "key1", "phones")
    assert suspension is not None
    assert suspension.until == clock.now() + timedelta(seconds=600)
    with pytest.raises(KeySuspended) as caught:
        service.refuse_if_suspended("key1")
    assert caught.value.status == 403 and caught.value.retry_after_s == 600
    service.refuse_if_suspended("key2")  # others are not affected
    replica = PolicyService(store, clock)
    await replica.refresh()
    with pytest.raises(KeySuspended):
        replica.refuse_if_suspended("key1")
    clock.advance(601)
    service.refuse_if_suspended("key1")  # expired


async def test_repeated_violations_suspend_a_key_in_memory() -> None:
    await _suspends_after_violations(InMemoryPolicyStore())


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_repeated_violations_suspend_a_key_in_the_store(kind: str, tmp_path: Path) -> None:
    async with database_url(kind, tmp_path) as url:
        engine = await open_database(url)
        try:
            await _suspends_after_violations(SqlPolicyStore(engine))
        finally:
            await engine.dispose()


async def test_violations_outside_the_window_do_not_count() -> None:
    clock = ManualClock()
    service = PolicyService(InMemoryPolicyStore(), clock)
    await service.apply("ten_a", TENANT, "k1")
    assert await service.record_violation("ten_a", "key1", "r") is None
    clock.advance(61)
    assert await service.record_violation("ten_a", "key1", "r") is None
    assert await service.lift("key1") is False


async def test_a_category_filter_keeps_inline_words(tmp_path: Path) -> None:
    (tmp_path / "lib.txt").write_text(
        "# category: gambling\n赌场\n# category: drugs\n冰毒\n", encoding="utf-8"
    )
    service = PolicyService(InMemoryPolicyStore(), ManualClock(), libraries_dir=tmp_path)
    text = (
        "rules:\n  - id: w\n    type: words\n    words: [inline]\n    library: lib\n"
        "    categories: [gambling]\n"
    )
    await service.apply(GLOBAL_SCOPE, text, "k1")
    policy = service.for_tenant("t")
    for blocked in ("inline", "去赌场"):
        with pytest.raises(PolicyViolation):
            policy.check_input(chat(blocked))
    assert policy.check_input(chat("冰毒")).decisions == []


async def test_the_readme_example_policy_applies_and_works(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Policies", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "banned-cn.txt").write_text(
        "# category: gambling\n百家乐\n# category: fraud\n刷流水\n", encoding="utf-8"
    )
    service = PolicyService(InMemoryPolicyStore(), ManualClock(), libraries_dir=tmp_path)
    await service.apply(GLOBAL_SCOPE, example, "k1")
    policy = service.for_tenant("t")
    assert policy.content_mode == "masked" and policy.lockout is not None
    for text in ("玩 百 家 乐", "去网络赌场", "刷单 然后 返利"):
        with pytest.raises(PolicyViolation):
            policy.check_input(
                GenerationRequest(
                    request_id="r",
                    model="glm-4",
                    kind="chat",
                    messages=(Message(role="user", content=text),),
                )
            )
    masked = policy.check_input(
        GenerationRequest(
            request_id="r",
            model="glm-4",
            kind="chat",
            messages=(Message(role="user", content="工号 EMP-123456 电话 13812345678"),),
        )
    )
    assert masked.request.messages[0].text == "工号 ***-****** 电话 138****5678"
    assert masked.regions == ("cn-north-1", "cn-east-2")
    assert masked.request.params.max_tokens == 2048
