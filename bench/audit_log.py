"""Audit log on SQLite: append rate, filtered queries at a million events, verification rate.

    . .venv/bin/activate
    python bench/audit_log.py                       # 1,000,000 events
    python bench/audit_log.py --events 200000 --json out.json

What it measures, on a fresh SQLite file in a temporary folder (the schema of the migrations):

1. ``record()``: the request path's cost per event (buffering only).
2. Appends through ``SqlAuditStore.append`` (one transaction per batch of ``--batch`` events:
   chain lock, head read, hashing, insert), ``--append-events`` events: events/s.
3. A bulk load up to ``--events`` events: rows chained in Python (the same ``chain.link``) and
   inserted with executemany on a synchronous connection, every index in place. Load rate.
4. Filtered pages (``limit=100``, newest first) at that size: median and worst of ``--repeats``
   runs, in ms, for the filters the API offers.
5. ``verify_log`` over the whole log: events/s.

The data: 50 tenants, 10 keys each, 8 models, statuses 200 (95%), 429 (3%), 403 (2%, each with
a policy decision from 20 rules), 1 admin event in 200, spread evenly over 30 days.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import insert

from openautoglm.audit.chain import link
from openautoglm.audit.log import AuditLog, AuditLogOptions
from openautoglm.audit.model import AuditRecord, ChainHead
from openautoglm.audit.ports import AuditQuery
from openautoglm.audit.signing import CheckpointSigner
from openautoglm.audit.verify import verify_log
from openautoglm.core.clock import SystemClock
from openautoglm.store.audit_sql import SqlAuditStore, event_row, rule_rows
from openautoglm.store.database import open_database
from openautoglm.store.tables import audit_event_rules, audit_events

START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_S = 30 * 86_400
TENANTS = [f"ten_{i:02d}" for i in range(50)]
MODELS = [f"model-{i}" for i in range(8)]
RULES = [f"rule.{i:02d}" for i in range(20)]


def make_records(first: int, count: int, total: int, rng: random.Random) -> list[AuditRecord]:
    records = []
    for n in range(first, first + count):
        tenant = rng.choice(TENANTS)
        roll = rng.random()
        status = 200 if roll < 0.95 else 429 if roll < 0.98 else 403
        is_admin = n % 200 == 199
        decisions = (
            [{"rule": rng.choice(RULES), "action": "block", "stage": "input"}]
            if status == 403
            else []
        )
        records.append(
            AuditRecord(
                request_id=f"{n:024x}",
                occurred_at=START + timedelta(seconds=SPAN_S * n / total),
                kind="admin" if is_admin else "request",
                endpoint="POST /v1/admin/keys" if is_admin else "POST /v1/chat/completions",
                status=status,
                tenant_id=tenant,
                key_id=f"key_{tenant}_{rng.randrange(10)}",
                role="developer",
                action="key.created" if is_admin else None,
                model=None if is_admin else rng.choice(MODELS),
                instance="default",
                error_code={429: "rate_limit_exceeded", 403: "policy_blocked"}.get(status),
                client_ip="10.0.0.1",
                stages={"auth": 0.05, "limits": 0.04, "policy": 0.12, "backend": 180.0},
                usage={"prompt_tokens": 120, "completion_tokens": 80},
                decisions=decisions,
                prompt="sha256:" + "ab" * 32,
                answer="sha256:" + "cd" * 32,
            )
        )
    return records


async def measure_record(num: int) -> float:
    """Microseconds per ``AuditLog.record`` call (the request path's share)."""
    log = AuditLog(
        _NullStore(),
        _signer(),
        SystemClock(),
        AuditLogOptions(max_pending=num + 1, batch_size=10_000),
    )
    records = make_records(0, num, num, random.Random(1))
    begun = time.perf_counter()
    for record in records:
        log.record(record)
    return (time.perf_counter() - begun) / num * 1e6


class _NullStore:
    """Never called: ``record`` must not touch the store."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"record() called the store ({name})")


_SIGNER: list[CheckpointSigner] = []


def _signer() -> CheckpointSigner:
    if not _SIGNER:
        _SIGNER.append(CheckpointSigner.from_file(Path(tempfile.mkdtemp()) / "audit_signing.key"))
    return _SIGNER[0]


async def measure_appends(store: SqlAuditStore, num: int, batch: int, total: int) -> float:
    rng = random.Random(2)
    begun = time.perf_counter()
    for first in range(0, num, batch):
        await store.append(make_records(first, min(batch, num - first), total, rng))
    return num / (time.perf_counter() - begun)


def bulk_load(path: Path, head: ChainHead, upto: int, total: int) -> None:
    """Chain and insert events ``head.seq+1 .. upto`` directly: the fast path to a big log."""
    engine = create_sync_engine(f"sqlite:///{path}")
    rng = random.Random(3)
    chunk = 20_000
    with engine.begin() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
    while head.seq < upto:
        count = min(chunk, upto - head.seq)
        linked = link(make_records(head.seq, count, total, rng), head)
        with engine.begin() as connection:
            connection.execute(
                insert(audit_events), [event_row(e.event, e.payload) for e in linked]
            )
            rules = [row for e in linked for row in rule_rows(e.event)]
            if rules:
                connection.execute(insert(audit_event_rules), rules)
        head = ChainHead(linked[-1].event.seq, linked[-1].event.hash)
        print(f"\r  loaded {head.seq:>9,} events", end="", flush=True)
    print()
    engine.dispose()


def queries(total: int) -> dict[str, AuditQuery]:
    mid = START + timedelta(seconds=SPAN_S / 2)
    return {
        "newest, no filter": AuditQuery(),
        "tenant": AuditQuery(tenant_id="ten_07"),
        "tenant + 1 day": AuditQuery(tenant_id="ten_07", since=mid, until=mid + timedelta(days=1)),
        "tenant + 1 hour, 10 days ago": AuditQuery(
            tenant_id="ten_07", since=mid, until=mid + timedelta(hours=1)
        ),
        "time range only (1 hour)": AuditQuery(since=mid, until=mid + timedelta(hours=1)),
        "tenant + status 429": AuditQuery(tenant_id="ten_07", status=429),
        "key": AuditQuery(key_id="key_ten_07_3"),
        "model + since": AuditQuery(model="model-3", since=mid),
        "rule": AuditQuery(rule="rule.05"),
        "rule + tenant": AuditQuery(rule="rule.05", tenant_id="ten_07"),
        "kind admin + tenant": AuditQuery(kind="admin", tenant_id="ten_07"),
        "status 403 + model (scan)": AuditQuery(status=403, model="model-1"),
    }


async def timed(call: Callable[[], Awaitable[Any]], repeats: int) -> tuple[float, float, Any]:
    samples, result = [], None
    for _ in range(repeats):
        begun = time.perf_counter()
        result = await call()
        samples.append((time.perf_counter() - begun) * 1000)
    return statistics.median(samples), max(samples), result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--append-events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.db"
        engine = await open_database(f"sqlite+aiosqlite:///{path}")
        store = SqlAuditStore(engine)
        results["record_us"] = await measure_record(100_000)
        print(f"record(): {results['record_us']:.2f} µs per event (buffer only)")
        appended = min(args.append_events, args.events)
        results["append_events_per_s"] = await measure_appends(
            store, appended, args.batch, args.events
        )
        print(f"append: {results['append_events_per_s']:,.0f} events/s (batches of {args.batch})")
        head = await store.head()
        assert head is not None
        begun = time.perf_counter()
        bulk_load(path, head, args.events, args.events)
        results["bulk_load_events_per_s"] = (args.events - head.seq) / (time.perf_counter() - begun)
        print(f"bulk load: {results['bulk_load_events_per_s']:,.0f} events/s")
        await engine.dispose()  # the bulk load wrote behind the pool's back
        engine = await open_database(f"sqlite+aiosqlite:///{path}")
        store = SqlAuditStore(engine)
        print(f"\nfiltered page of 100 at {args.events:,} events", end=" ")
        print(f"(ms, median / worst of {args.repeats})")
        results["queries_ms"] = {}
        for name, query in queries(args.events).items():
            median, worst, page = await timed(partial(store.page, query, limit=100), args.repeats)
            results["queries_ms"][name] = {
                "median": median,
                "worst": worst,
                "rows": len(page.events),
            }
            print(f"  {name:<32} {median:8.2f} {worst:8.2f}   ({len(page.events)} rows)")
        # A deep page: the 50th page of one tenant, reached by cursor.
        cursor = None
        for _ in range(49):
            cursor = (
                await store.page(AuditQuery(tenant_id="ten_07"), limit=100, cursor=cursor)
            ).next_cursor
        median, worst, _ = await timed(
            lambda: store.page(AuditQuery(tenant_id="ten_07"), limit=100, cursor=cursor),
            args.repeats,
        )
        results["queries_ms"]["tenant, page 50"] = {"median": median, "worst": worst}
        print(f"  {'tenant, page 50 (cursor)':<32} {median:8.2f} {worst:8.2f}")
        begun = time.perf_counter()
        report = await verify_log(store, None)
        elapsed = time.perf_counter() - begun
        assert report.ok, report
        results["verify_events_per_s"] = report.checked / elapsed
        print(
            f"\nverify: {report.checked:,} events in {elapsed:.1f} s = "
            f"{results['verify_events_per_s']:,.0f} events/s"
        )
        await engine.dispose()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
