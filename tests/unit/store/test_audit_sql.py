"""The audit store: one contract (memory, SQLite, PostgreSQL), then tampering with raw SQL.

Every tamper test edits the database the way someone with database access would, then checks
that verification names the exact seq where the log stops being what was written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.support.databases import database_url
from tests.unit.audit.support import T0, make_record

from openautoglm.audit.chain import Linked, link
from openautoglm.audit.log import AuditLog, AuditLogOptions
from openautoglm.audit.model import ChainHead, VerifyReport
from openautoglm.audit.ports import AuditQuery, AuditStore, AuditStoreError, InMemoryAuditStore
from openautoglm.audit.signing import CheckpointSigner
from openautoglm.audit.verify import verify_log
from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import InvalidRequestError
from openautoglm.store.audit_sql import SqlAuditStore, event_row
from openautoglm.store.database import create_engine, migrate, open_database
from openautoglm.store.tables import audit_checkpoints, audit_event_rules, audit_events


@dataclass
class Backend:
    kind: str
    store: AuditStore
    url: str | None = None
    engines: list[AsyncEngine] = field(default_factory=list)

    def replica(self) -> AuditStore:
        """A store on its own engine (own connections): another process, as the DB sees it."""
        if self.url is None:
            return self.store
        engine = create_engine(self.url)
        self.engines.append(engine)
        return SqlAuditStore(engine)

    async def execute(self, statement: Any, params: dict[str, Any] | None = None) -> None:
        """Raw SQL, outside the store: what a person with database access could do."""
        async with self.engines[0].begin() as connection:
            await connection.execute(statement, params or {})

    async def rows(self, *seqs: int) -> list[dict[str, Any]]:
        async with self.engines[0].connect() as connection:
            result = await connection.execute(
                select(audit_events).where(audit_events.c.seq.in_(seqs)).order_by("seq")
            )
            return [dict(row._mapping) for row in result]


async def _backend(kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    if kind == "memory":
        yield Backend(kind, InMemoryAuditStore())
        return
    async with database_url(kind, tmp_path) as url:
        engine = await open_database(url)
        backend = Backend(kind, SqlAuditStore(engine), url, [engine])
        try:
            yield backend
        finally:
            for each in backend.engines:
                await each.dispose()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for each in _backend(request.param, tmp_path):
        yield each


@pytest.fixture(params=["sqlite", "postgresql"])
async def sql(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for each in _backend(request.param, tmp_path):
        yield each


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner.from_file(tmp_path / "audit_signing.key")


async def verified(backend: Backend, signer: CheckpointSigner) -> VerifyReport:
    return await verify_log(backend.store, signer.verifier)


def rule(rule_id: str, stage: str = "input") -> dict[str, str]:
    return {"rule": rule_id, "action": "block", "stage": stage}


# the contract


async def test_append_chains_batches_and_reads_back_the_same_events(backend: Backend) -> None:
    store = backend.store
    first = await store.append([make_record(i) for i in range(3)])
    second = await store.append([make_record(3, decisions=[rule("r1"), rule("r1", "output")])])
    assert [e.seq for e in first + second] == [1, 2, 3, 4]
    assert second[0].prev_hash == first[-1].hash
    assert await store.head() == ChainHead(4, second[0].hash)
    assert await store.first_seq() == 1
    page = await store.page(AuditQuery(), order="asc")
    assert page.events == tuple(first + second) and page.next_cursor is None
    assert page.events[3].record.stages == {
        "auth": 0.1,
        "limits": 0.05,
        "policy": 0.3,
        "backend": 12.5,
    }
    assert list(page.events[3].record.stages) == ["auth", "limits", "policy", "backend"]
    assert await store.append([]) == []


async def test_filters(backend: Backend) -> None:
    store = backend.store
    await store.append(
        [
            make_record(0),
            make_record(1, tenant_id="ten_b", key_id="key_b"),
            make_record(2, model="other", status=429, error_code="rate_limit_exceeded"),
            make_record(3, decisions=[rule("pii.phone"), rule("topic.weapons", "output")]),
            make_record(4, tenant_id="ten_b", decisions=[rule("pii.phone")]),
            make_record(
                5, kind="admin", action="key.created", model=None, endpoint="POST /v1/admin/keys"
            ),
        ]
    )

    async def seqs(**filters: Any) -> list[int]:
        page = await store.page(AuditQuery(**filters), order="asc")
        return [e.seq for e in page.events]

    assert await seqs() == [1, 2, 3, 4, 5, 6]
    assert await seqs(tenant_id="ten_b") == [2, 5]
    assert await seqs(key_id="key_b") == [2]
    assert await seqs(model="other") == [3]
    assert await seqs(status=429) == [3]
    assert await seqs(kind="admin") == [6]
    assert await seqs(rule="pii.phone") == [4, 5]
    assert await seqs(rule="pii.phone", tenant_id="ten_a") == [4]
    assert await seqs(rule="topic.weapons") == [4]
    assert await seqs(rule="nope") == []
    assert await seqs(since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4)) == [3, 4]
    assert await seqs(tenant_id="ten_a", since=T0 + timedelta(seconds=3)) == [4, 6]


async def test_pages_are_newest_first_without_repeats_or_gaps(backend: Backend) -> None:
    store = backend.store
    await store.append([make_record(i) for i in range(25)])
    seen: list[int] = []
    cursor = None
    while True:
        page = await store.page(AuditQuery(tenant_id="ten_a"), limit=7, cursor=cursor)
        seen += [e.seq for e in page.events]
        # Appends between pages land above the first page and never shift later ones.
        await store.append([make_record(100 + len(seen))])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(range(25, 0, -1))
    ascending: list[int] = []
    cursor = None
    while True:
        page = await store.page(AuditQuery(rule=None), limit=10, cursor=cursor, order="asc")
        ascending += [e.seq for e in page.events]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert ascending == list(range(1, len(ascending) + 1)) and len(ascending) == 29


async def test_rule_filtered_pages(backend: Backend) -> None:
    store = backend.store
    await store.append(
        [make_record(i, decisions=[rule("r")] if i % 3 == 0 else []) for i in range(30)]
    )
    first = await store.page(AuditQuery(rule="r"), limit=4)
    second = await store.page(AuditQuery(rule="r"), limit=4, cursor=first.next_cursor)
    third = await store.page(AuditQuery(rule="r"), limit=4, cursor=second.next_cursor)
    assert [e.seq for e in first.events + second.events + third.events] == [
        28,
        25,
        22,
        19,
        16,
        13,
        10,
        7,
        4,
        1,
    ]
    assert third.next_cursor is None


async def test_bad_cursors_and_limits_are_refused(backend: Backend) -> None:
    store = backend.store
    await store.append([make_record(i) for i in range(3)])
    page = await store.page(AuditQuery(), limit=1)
    assert page.next_cursor is not None
    with pytest.raises(InvalidRequestError) as garbled:
        await store.page(AuditQuery(), cursor="!!not-a-cursor")
    assert garbled.value.code == "invalid_cursor"
    with pytest.raises(InvalidRequestError):
        await store.page(AuditQuery(), cursor=page.next_cursor, order="asc")
    for limit in (0, 1001):
        with pytest.raises(InvalidRequestError):
            await store.page(AuditQuery(), limit=limit)


async def test_retention_keeps_the_log_verifiable(
    backend: Backend, signer: CheckpointSigner
) -> None:
    log = AuditLog(backend.store, signer, ManualClock(T0 + timedelta(days=200)))
    for i in range(20):
        log.record(make_record(i, decisions=[rule("r")]))
    await log.flush()
    await log.checkpoint()
    assert await log.prune(T0 + timedelta(seconds=10), chunk_events=4) == 10
    assert await backend.store.first_seq() == 11
    assert [
        e.seq for e in (await backend.store.page(AuditQuery(rule="r"), order="asc")).events
    ] == list(range(11, 21))
    report = await log.verify()
    assert (report.ok, report.checked, report.first_seq, report.last_seq) == (True, 10, 11, 20)
    assert report.checkpoints == 2  # the prune anchor at 10 and the periodic one at 20
    log.record(make_record(50))
    await log.flush()
    assert (await log.verify()).ok


# writers at once


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_concurrent_writers_on_separate_connections_keep_one_chain(
    kind: str, tmp_path: Path, signer: CheckpointSigner
) -> None:
    async for backend in _backend(kind, tmp_path):
        writers = [backend.replica() for _ in range(4)]

        async def write(index: int, store: AuditStore) -> None:
            for batch in range(10):
                await store.append(
                    [
                        make_record(1000 * index + 10 * batch + i, tenant_id=f"t{index}")
                        for i in range(5)
                    ]
                )

        await asyncio.gather(*(write(i, store) for i, store in enumerate(writers)))
        report = await verified(backend, signer)
        assert (report.ok, report.checked, report.last_seq) == (True, 200, 200)
        for index in range(4):
            page = await backend.store.page(
                AuditQuery(tenant_id=f"t{index}"), limit=1000, order="asc"
            )
            ids = [e.record.request_id for e in page.events]
            assert ids == sorted(ids) and len(ids) == 50  # each writer's order is kept


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_concurrent_audit_logs_flushing_together(
    kind: str, tmp_path: Path, signer: CheckpointSigner
) -> None:
    async for backend in _backend(kind, tmp_path):
        logs = [AuditLog(backend.replica(), signer, ManualClock(T0)) for _ in range(3)]
        for round_ in range(5):
            for n, log in enumerate(logs):
                for i in range(20):
                    log.record(make_record(round_ * 1000 + n * 100 + i))
            await asyncio.gather(
                *(log.flush() for log in logs), *(log.checkpoint() for log in logs)
            )
        assert sum(log.written for log in logs) == 300
        report = await verified(backend, signer)
        assert (report.ok, report.checked) == (True, 300)
        assert report.checkpoints >= 1


# an unreachable store


async def test_an_audit_log_rides_out_a_store_failure(
    sql: Backend, signer: CheckpointSigner
) -> None:
    log = AuditLog(sql.store, signer, ManualClock(T0), AuditLogOptions(flush_interval_s=0.01))
    await chain_of(sql, 2)
    await sql.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    await log.start()
    try:
        for i in range(2, 7):
            log.record(make_record(i))
        await eventually(lambda: log.last_flush_error is not None)
        assert "audit store failed" in (log.last_flush_error or "")
        assert (log.pending, log.written) == (5, 0)
        await sql.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
        await eventually(lambda: log.written == 5, timeout_s=15)
        assert log.last_flush_error is None
    finally:
        await log.close()
    report = await verified(sql, signer)
    assert (report.ok, report.checked) == (True, 7)
    page = await sql.store.page(AuditQuery(), order="asc")
    assert [e.record.request_id for e in page.events] == [f"req_{i:06d}" for i in range(7)]


async def eventually(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_a_down_store_raises_the_ports_error(signer: CheckpointSigner) -> None:
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    try:
        store = SqlAuditStore(engine)
        with pytest.raises(AuditStoreError) as failed:
            await store.append([make_record(0)])
        assert failed.value.status == 503
        with pytest.raises(AuditStoreError):
            await store.head()
    finally:
        await engine.dispose()


# tampering, with raw SQL


async def chain_of(sql: Backend, n: int = 10, **changes: Any) -> None:
    await sql.store.append([make_record(i, **changes) for i in range(n)])


async def test_an_untampered_log_verifies(sql: Backend, signer: CheckpointSigner) -> None:
    await chain_of(sql, decisions=[rule("r")])
    report = await verified(sql, signer)
    assert (report.ok, report.checked, report.first_broken_seq, report.reason) == (
        True,
        10,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("status", 500),
        ("tenant_id", "ten_evil"),
        ("model", "another-model"),
        ("occurred_at", T0 + timedelta(days=1)),
        ("error_code", "forged"),
    ],
)
async def test_an_edited_column_is_detected_at_its_seq(
    sql: Backend, signer: CheckpointSigner, column: str, value: Any
) -> None:
    await chain_of(sql)
    await sql.execute(update(audit_events).where(audit_events.c.seq == 4).values({column: value}))
    report = await verified(sql, signer)
    assert (report.ok, report.first_broken_seq, report.checked) == (False, 4, 3)
    assert report.reason == f"column '{column}' of event 4 does not match its hashed payload"


async def test_an_edited_payload_is_detected_at_its_seq(
    sql: Backend, signer: CheckpointSigner
) -> None:
    await chain_of(sql)
    await sql.execute(
        text(
            "UPDATE audit_events SET payload = replace(payload, 'answer 5', 'answer X') "
            "WHERE seq = 6"
        )
    )
    assert (await sql.rows(6))[0]["payload"].count("answer X") == 1
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        6,
        "hash of event 6 does not match its payload",
    )


async def test_a_deleted_row_is_detected_at_its_seq(sql: Backend, signer: CheckpointSigner) -> None:
    await chain_of(sql)
    await sql.execute(text("DELETE FROM audit_events WHERE seq = 5"))
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        5,
        "event 5 is missing (next stored event: 6)",
    )


async def test_deleting_the_first_rows_is_detected(sql: Backend, signer: CheckpointSigner) -> None:
    await chain_of(sql)
    await sql.execute(text("DELETE FROM audit_events WHERE seq <= 2"))
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        1,
        "event 1..2 is missing (next stored event: 3)",
    )


def _row(linked: Linked) -> dict[str, Any]:
    return event_row(linked.event, linked.payload)


async def test_a_forged_row_spliced_in_is_detected(sql: Backend, signer: CheckpointSigner) -> None:
    await chain_of(sql)
    third = (await sql.rows(3))[0]
    # Make room after event 3 (two steps: the primary key is checked row by row), then insert a
    # forged event whose hash is computed correctly from event 3's.
    await sql.execute(text("UPDATE audit_events SET seq = -seq WHERE seq >= 4"))
    await sql.execute(text("UPDATE audit_events SET seq = 1 - seq WHERE seq < 0"))
    forged = link([make_record(99, answer="never said")], ChainHead(3, third["hash"]))[0]
    await sql.execute(insert(audit_events).values(_row(forged)))
    report = await verified(sql, signer)
    # The forged row is self-consistent; the chain breaks where the original event 4 resumes.
    assert (report.first_broken_seq, report.reason) == (
        5,
        "prev_hash of event 5 does not match the hash of event 4",
    )


async def test_a_forged_row_with_a_made_up_hash_is_detected(
    sql: Backend, signer: CheckpointSigner
) -> None:
    await chain_of(sql)
    head = await sql.store.head()
    assert head is not None
    forged = link([make_record(99)], head)[0]
    await sql.execute(insert(audit_events).values({**_row(forged), "hash": "ab" * 32}))
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        11,
        "hash of event 11 does not match its payload",
    )


async def test_swapped_rows_are_detected_at_the_first(
    sql: Backend, signer: CheckpointSigner
) -> None:
    await chain_of(sql)
    three, seven = await sql.rows(3, 7)
    for target, source in ((3, seven), (7, three)):
        values = {k: v for k, v in source.items() if k != "seq"}
        await sql.execute(update(audit_events).where(audit_events.c.seq == target).values(values))
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        3,
        "prev_hash of event 3 does not match the hash of event 2",
    )


async def test_swapped_payloads_are_detected_at_the_first(
    sql: Backend, signer: CheckpointSigner
) -> None:
    await chain_of(sql)
    three, seven = await sql.rows(3, 7)
    await sql.execute(
        update(audit_events).where(audit_events.c.seq == 3).values(payload=seven["payload"])
    )
    await sql.execute(
        update(audit_events).where(audit_events.c.seq == 7).values(payload=three["payload"])
    )
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        3,
        "hash of event 3 does not match its payload",
    )


async def test_an_edited_rule_index_is_detected(sql: Backend, signer: CheckpointSigner) -> None:
    await chain_of(sql, decisions=[rule("pii.phone")])
    await sql.execute(delete(audit_event_rules).where(audit_event_rules.c.seq == 8))
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        8,
        "policy rule index of event 8 does not match its hashed payload",
    )


async def test_a_rewritten_chain_is_caught_by_a_signed_checkpoint(
    sql: Backend, signer: CheckpointSigner
) -> None:
    await chain_of(sql)
    log = AuditLog(sql.store, signer, ManualClock(T0))
    assert (await log.checkpoint()) is not None  # signs seq 10
    # Rewrite event 5 and recompute every later hash: the chain alone looks fine again.
    fourth = (await sql.rows(4))[0]
    rewritten = link(
        [make_record(4, answer="rewritten")] + [make_record(i) for i in range(5, 10)],
        ChainHead(4, fourth["hash"]),
    )
    for each in rewritten:
        await sql.execute(
            update(audit_events).where(audit_events.c.seq == each.event.seq).values(_row(each))
        )
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        10,
        "checkpoint at seq 10 does not match the chain",
    )
    assert report.checked == 10


async def test_a_forged_checkpoint_row_is_detected(sql: Backend, signer: CheckpointSigner) -> None:
    await chain_of(sql)
    log = AuditLog(sql.store, signer, ManualClock(T0))
    await log.checkpoint()
    head = await sql.store.head()
    assert head is not None
    stranger = CheckpointSigner(Ed25519PrivateKey.generate()).sign(
        ChainHead(6, head.hash), T0, "periodic"
    )
    await sql.store.add_checkpoint(stranger)
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        6,
        "checkpoint at seq 6 is signed by an unknown key",
    )


async def test_an_altered_checkpoint_row_is_detected(
    sql: Backend, signer: CheckpointSigner
) -> None:
    await chain_of(sql)
    await AuditLog(sql.store, signer, ManualClock(T0)).checkpoint()
    await sql.execute(update(audit_checkpoints).values(seq=9))
    report = await verified(sql, signer)
    assert (report.first_broken_seq, report.reason) == (
        9,
        "checkpoint at seq 9 has an invalid signature",
    )


async def test_deleting_the_retention_anchor_is_detected(
    sql: Backend, signer: CheckpointSigner
) -> None:
    log = AuditLog(sql.store, signer, ManualClock(T0 + timedelta(days=200)))
    await chain_of(sql)
    assert await log.prune(T0 + timedelta(seconds=4)) == 4
    assert (await log.verify()).ok
    await sql.execute(text("DELETE FROM audit_checkpoints WHERE kind = 'prune'"))
    report = await log.verify()
    assert (report.first_broken_seq, report.reason) == (
        1,
        "event 1..4 is missing (next stored event: 5)",
    )


async def test_the_migration_creates_the_audit_tables(sql: Backend) -> None:
    await migrate(sql.engines[0])  # idempotent
    async with sql.engines[0].connect() as connection:
        for table in ("audit_events", "audit_event_rules", "audit_checkpoints"):
            assert await connection.scalar(text(f"SELECT count(*) FROM {table}")) == 0
