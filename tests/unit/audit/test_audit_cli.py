"""``autoglm audit verify|export|prune`` against a SQLite store."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from tests.unit.audit.support import T0, make_record
from typer.testing import CliRunner

from openautoglm.audit.log import AuditLog
from openautoglm.audit.signing import CheckpointSigner
from openautoglm.cli.main import app
from openautoglm.core.clock import ManualClock
from openautoglm.store.audit_sql import SqlAuditStore
from openautoglm.store.database import open_database


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A store with 12 events (tenants ``ten_a``/``ten_b``) and a signed checkpoint."""

    async def fill() -> None:
        engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'autoglm.db'}")
        try:
            signer = CheckpointSigner.from_file(tmp_path / "audit_signing.key")
            log = AuditLog(SqlAuditStore(engine), signer, ManualClock(T0))
            for i in range(12):
                log.record(make_record(i, tenant_id="ten_a" if i % 3 else "ten_b"))
            await log.close()
        finally:
            await engine.dispose()

    asyncio.run(fill())
    return tmp_path


def run(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["audit", *args], env={"AUTOGLM_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    )
    return result.exit_code, result.output


def tamper(data_dir: Path, statement: str) -> None:
    async def go() -> None:
        engine = await open_database(f"sqlite+aiosqlite:///{data_dir / 'autoglm.db'}")
        try:
            async with engine.begin() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(go())


def test_verify_exits_0_when_intact_and_1_when_broken(data_dir: Path) -> None:
    code, output = run(data_dir, "verify")
    assert code == 0, output
    assert "OK" in output and "12" in output
    tamper(data_dir, "UPDATE audit_events SET status = 201 WHERE seq = 7")
    code, output = run(data_dir, "verify")
    assert code == 1
    assert "BROKEN" in output and "column 'status' of event 7" in output


def test_export_jsonl_and_csv_with_filters(data_dir: Path) -> None:
    target = data_dir / "out.jsonl"
    code, output = run(data_dir, "export", "--tenant", "ten_b", "-o", str(target))
    assert code == 0, output
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [e["seq"] for e in lines] == [1, 4, 7, 10]
    assert "Exported 4 events" in output
    target = data_dir / "out.csv"
    since = (T0 + timedelta(seconds=6)).isoformat()
    code, output = run(data_dir, "export", "--format", "csv", "--since", since, "-o", str(target))
    assert code == 0, output
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["seq"]) for r in rows] == list(range(7, 13))
    code, _ = run(data_dir, "export", "--format", "xml")
    assert code == 2


def test_prune_respects_retention_unless_forced(data_dir: Path) -> None:
    today = datetime.now(UTC).date().isoformat()
    code, output = run(data_dir, "prune", "--before", today)
    assert code == 2 and "retention period" in output
    code, output = run(data_dir, "verify")
    assert code == 0 and "12" in output  # nothing was deleted
    before = (T0 + timedelta(seconds=5)).isoformat()
    code, output = run(data_dir, "prune", "--before", before, "--force")
    assert code == 0, output
    assert "Deleted 5 events" in output
    code, output = run(data_dir, "verify")
    assert code == 0, output
    code, output = run(data_dir, "export", "-o", str(data_dir / "rest.jsonl"))
    rest = [json.loads(line)["seq"] for line in (data_dir / "rest.jsonl").read_text().splitlines()]
    assert rest == list(range(6, 13))
