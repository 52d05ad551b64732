"""``AuditLog``: non-blocking recording, batching, shutdown, outages, checkpoints, retention."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from tests.unit.audit.support import T0, make_record

from openautoglm.audit.log import AuditLog, AuditLogOptions
from openautoglm.audit.model import AuditEvent, AuditRecord
from openautoglm.audit.ports import AuditQuery, AuditStoreError, InMemoryAuditStore
from openautoglm.audit.signing import CheckpointSigner
from openautoglm.core.clock import ManualClock
from openautoglm.services import enforce_audit_retention


class FlakyStore(InMemoryAuditStore):
    """An in-memory store that can be taken down, and counts the batches it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.batches: list[int] = []

    async def append(self, records: Sequence[AuditRecord]) -> list[AuditEvent]:
        if self.down:
            raise AuditStoreError("database is unreachable")
        self.batches.append(len(records))
        return await super().append(records)


async def eventually(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner.from_file(tmp_path / "audit_signing.key")


def make_log(
    store: FlakyStore, signer: CheckpointSigner, clock: ManualClock | None = None, **options: float
) -> AuditLog:
    return AuditLog(store, signer, clock or ManualClock(T0), AuditLogOptions(**options))  # type: ignore[arg-type]


async def stored_request_ids(store: FlakyStore) -> list[str]:
    page = await store.page(AuditQuery(), limit=1000, order="asc")
    return [event.record.request_id for event in page.events]


async def test_record_buffers_and_flush_writes_in_order(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    log = make_log(store, signer, batch_size=4)
    for i in range(10):
        log.record(make_record(i))
    assert (log.pending, log.written, store.batches) == (10, 0, [])  # nothing awaited yet
    await log.flush()
    assert store.batches == [4, 4, 2]
    assert (log.pending, log.written, log.dropped) == (0, 10, 0)
    assert await stored_request_ids(store) == [f"req_{i:06d}" for i in range(10)]
    assert (await log.verify()).ok


async def test_a_full_batch_is_written_without_waiting_for_the_interval(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    log = make_log(store, signer, batch_size=5, flush_interval_s=60)
    await log.start()
    try:
        for i in range(5):
            log.record(make_record(i))
        await eventually(lambda: log.written == 5)
        assert store.batches == [5]
    finally:
        await log.close()


async def test_the_interval_flushes_a_partial_batch(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    log = make_log(store, signer, batch_size=500, flush_interval_s=0.01)
    await log.start()
    try:
        log.record(make_record(0))
        await eventually(lambda: log.written == 1)
    finally:
        await log.close()


async def test_close_writes_everything_and_signs_the_head(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    log = make_log(store, signer, batch_size=500, flush_interval_s=60)
    await log.start()
    for i in range(7):
        log.record(make_record(i))
    await log.close()
    assert (log.written, log.pending) == (7, 0)
    checkpoints = await store.checkpoints()
    assert [(c.seq, c.kind) for c in checkpoints] == [(7, "periodic")]
    report = await log.verify()
    assert (report.ok, report.checked, report.checkpoints) == (True, 7, 1)


async def test_an_outage_keeps_records_buffered_until_the_store_is_back(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    log = make_log(store, signer, batch_size=3, flush_interval_s=0.005)
    await log.start()
    try:
        store.down = True
        for i in range(5):
            log.record(make_record(i))
        await eventually(lambda: log.last_flush_error is not None)
        assert log.last_flush_error == "database is unreachable"
        assert (log.pending, log.written) == (5, 0)
        with pytest.raises(AuditStoreError):
            await log.flush()
        log.record(make_record(5))
        store.down = False
        await eventually(lambda: log.written == 6)
        assert log.last_flush_error is None and log.pending == 0
    finally:
        await log.close()
    assert await stored_request_ids(store) == [f"req_{i:06d}" for i in range(6)]


async def test_beyond_max_pending_the_oldest_are_dropped_and_counted(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    log = make_log(store, signer, batch_size=10, max_pending=100)
    store.down = True
    for i in range(130):
        log.record(make_record(i))
    assert (log.pending, log.dropped) == (100, 30)
    store.down = False
    await log.flush()
    ids = await stored_request_ids(store)
    assert ids[0] == "req_000030" and ids[-1] == "req_000129" and len(ids) == 100


async def test_a_record_that_cannot_be_encoded_is_dropped_alone(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    log = make_log(store, signer, batch_size=10)
    log.record(make_record(0))
    log.record(make_record(1, detail={"when": object()}))
    log.record(make_record(2, stages={"auth": float("inf")}))
    log.record(make_record(3))
    await log.flush()
    assert (log.written, log.dropped, log.pending) == (2, 2, 0)
    assert await stored_request_ids(store) == ["req_000000", "req_000003"]
    assert (await log.verify()).ok


async def test_checkpoints_sign_only_a_new_head(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    log = make_log(store, signer)
    assert await log.checkpoint() is None  # empty log
    log.record(make_record(0))
    await log.flush()
    first = await log.checkpoint()
    assert first is not None and first.seq == 1
    assert await log.checkpoint() is None
    other_replica = make_log(store, signer)
    assert await other_replica.checkpoint() is None  # already signed by someone
    log.record(make_record(1))
    await log.flush()
    second = await other_replica.checkpoint()
    assert second is not None and second.seq == 2


async def test_prune_deletes_old_events_and_keeps_the_rest_verifiable(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    clock = ManualClock(T0 + timedelta(days=1))
    log = make_log(store, signer, clock)
    for i in range(10):
        log.record(make_record(i))  # one second apart from T0
    await log.flush()
    deleted = await log.prune(T0 + timedelta(seconds=4), chunk_events=3)
    assert deleted == 4
    assert await store.first_seq() == 5
    anchors = [c for c in await store.checkpoints() if c.kind == "prune"]
    assert [c.seq for c in anchors] == [4]  # older chunk anchors went with their events
    report = await log.verify()
    assert (report.ok, report.checked, report.first_seq) == (True, 6, 5)
    assert await log.prune(T0 + timedelta(seconds=4)) == 0


async def test_deleting_old_events_without_a_signed_anchor_is_reported(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    log = make_log(store, signer)
    for i in range(6):
        log.record(make_record(i))
    await log.flush()
    await log.checkpoint()  # a periodic checkpoint is no licence to delete
    point = await store.prune_point(T0 + timedelta(seconds=3))
    assert point is not None and point.seq == 3
    await store.prune(signer.sign(point, T0, "periodic"))  # deleted, but not by retention
    report = await log.verify()
    assert (report.ok, report.first_broken_seq) == (False, 1)
    assert report.reason == "event 1..3 is missing (next stored event: 4)"


async def test_the_retention_loop_prunes_on_its_first_round(
    store: FlakyStore, signer: CheckpointSigner
) -> None:
    clock = ManualClock(T0 + timedelta(days=181))
    log = make_log(store, signer, clock)
    for i in range(3):
        log.record(make_record(i))
    log.record(make_record(3, occurred_at=clock.now()))
    await log.flush()
    loop = asyncio.ensure_future(
        enforce_audit_retention(log, None, 180, clock, interval_s=3600, first_delay_s=0)
    )
    try:
        for _ in range(1000):
            if await store.first_seq() == 4:
                break
            await asyncio.sleep(0.005)
    finally:
        loop.cancel()
    assert await store.first_seq() == 4
    report = await log.verify()
    assert (report.ok, report.first_seq, report.checked) == (True, 4, 1)


class BuggyStore(FlakyStore):
    """Fails once with an error no store should raise (a bug), then works."""

    def __init__(self) -> None:
        super().__init__()
        self.bugs = 1

    async def append(self, records: Sequence[AuditRecord]) -> list[AuditEvent]:
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug in the store adapter")
        return await super().append(records)


async def test_an_unexpected_store_error_keeps_the_records_and_the_flusher(
    signer: CheckpointSigner,
) -> None:
    buggy = BuggyStore()
    log = make_log(buggy, signer, flush_interval_s=0.01)
    await log.start()
    try:
        for i in range(3):
            log.record(make_record(i))
        await eventually(lambda: log.written == 3)
        assert await stored_request_ids(buggy) == [f"req_{i:06d}" for i in range(3)]
        assert log.dropped == 0
    finally:
        await log.close()
