"""What the durable workflow engine costs per task, against a bare asyncio + graphlib run.

In-process (no HTTP): the real executor and SQL store run (1) 40 sequential no-op tasks and
(2) a random DAG of 10,000 no-op tasks (each depending on up to 3 of the 50 tasks before it), on
SQLite (a file, WAL) and on PostgreSQL (127.0.0.1:5432, a throw-away database). Every task's
moves are committed before they are acted on. The floor runs the same DAG with
``graphlib.TopologicalSorter`` and asyncio tasks, with no durability at all.

Printed: per-task overhead (wall time / tasks) and tasks/s for each, and the ratio to the floor.
Each engine run starts after a one-task warm-up run (a running server's writer connection is
already open); the floor takes the best of three.
Target: at most 1 ms per task for the sequential case on SQLite.

    python bench/workflow_overhead.py [--tasks 10000] [--workers 16] [--no-postgres] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import graphlib
import json
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from openautoglm.core.clock import SystemClock
from openautoglm.store.database import open_database
from openautoglm.store.workflows_sql import SqlWorkflowStore
from openautoglm.workflows.executor import Executor
from openautoglm.workflows.runners import TaskRunners
from openautoglm.workflows.service import WorkflowService

NOOP = "openautoglm.workflows.builtins:noop"
PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def sequential(count: int) -> dict[str, Any]:
    tasks = [
        {"id": f"t{i}", "type": "python", "callable": NOOP, "depends": [f"t{i - 1}"] if i else []}
        for i in range(count)
    ]
    return {"name": f"chain{count}", "tasks": tasks}


def random_dag(count: int, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    tasks = []
    for i in range(count):
        window = list(range(max(0, i - 50), i))
        depends = [f"t{j}" for j in rng.sample(window, min(len(window), rng.randint(0, 3)))]
        tasks.append({"id": f"t{i}", "type": "python", "callable": NOOP, "depends": depends})
    return {"name": f"dag{count}", "tasks": tasks}


async def engine_run(url: str, document: dict[str, Any], workers: int) -> float:
    engine = await open_database(url)
    store = SqlWorkflowStore(engine)
    executor = Executor(store, TaskRunners(), SystemClock(), workers)
    executor.start()
    service = WorkflowService(store, executor, SystemClock())
    try:
        # a running server has its writer connection open: warm it up with one task first
        await service.apply(sequential(1), "bench")
        warm = await service.start("chain1", {}, trigger="bench")
        await executor.wait(warm.id, timeout_s=60)
        await service.apply(document, "bench")
        started = time.perf_counter()
        run = await service.start(document["name"], {}, trigger="bench")
        await executor.wait(run.id, timeout_s=3600)
        elapsed = time.perf_counter() - started
        final = await store.get_run(run.id)
        assert final is not None and final.state.value == "succeeded", final
        return elapsed
    finally:
        await service.close()
        await engine.dispose()


async def floor_run(document: dict[str, Any], workers: int) -> float:
    """The same DAG on asyncio + graphlib: no store, no retries, no states."""

    async def noop() -> None:
        return None

    graph = {t["id"]: set(t["depends"]) for t in document["tasks"]}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    slots = asyncio.Semaphore(workers)
    started = time.perf_counter()
    running: dict[asyncio.Task[None], str] = {}

    async def one(task_id: str) -> None:
        async with slots:
            await noop()

    while sorter.is_active():
        for task_id in sorter.get_ready():
            running[asyncio.ensure_future(one(task_id))] = task_id
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            sorter.done(running.pop(finished))
    return time.perf_counter() - started


async def postgres_url() -> tuple[str, str] | None:
    name = f"autoglm_bench_{secrets.token_hex(4)}"
    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
        return None
    finally:
        await admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", name


async def drop_postgres(name: str) -> None:
    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cases = [
        ("40 sequential", sequential(40)),
        (f"{args.tasks} random DAG", random_dag(args.tasks)),
    ]
    report: dict[str, Any] = {"command": " ".join(sys.argv), "rows": []}
    stores: list[tuple[str, str, str | None]] = []
    folder = tempfile.mkdtemp(prefix="autoglm-wf-bench-")
    stores.append(("sqlite", f"sqlite+aiosqlite:///{Path(folder) / 'wf.db'}", None))
    if not args.no_postgres:
        made = await postgres_url()
        if made is not None:
            stores.append(("postgresql", made[0], made[1]))
    try:
        for label, document in cases:
            count = len(document["tasks"])
            floor = min([await floor_run(document, args.workers) for _ in range(3)])
            report["rows"].append(
                {
                    "case": label,
                    "store": "asyncio+graphlib (floor)",
                    "tasks": count,
                    "seconds": floor,
                }
            )
            for store, url, _ in stores:
                print(f"{label} on {store}", file=sys.stderr)
                seconds = await engine_run(url, document, args.workers)
                report["rows"].append(
                    {"case": label, "store": store, "tasks": count, "seconds": seconds}
                )
    finally:
        for _, _, name in stores:
            if name is not None:
                await drop_postgres(name)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    floors = {row["case"]: row["seconds"] for row in report["rows"] if "floor" in row["store"]}
    print(
        f"{'case':18} {'store':26} {'tasks':>6} {'seconds':>8} {'ms/task':>8} "
        f"{'tasks/s':>9} {'vs floor':>9}"
    )
    for row in report["rows"]:
        per_task_ms = row["seconds"] / row["tasks"] * 1000
        ratio = row["seconds"] / floors[row["case"]]
        print(
            f"{row['case']:18} {row['store']:26} {row['tasks']:>6} {row['seconds']:>8.3f} "
            f"{per_task_ms:>8.3f} {row['tasks'] / row['seconds']:>9.0f} {ratio:>8.0f}x"
        )
    sequential_sqlite = next(
        r for r in report["rows"] if r["case"] == "40 sequential" and r["store"] == "sqlite"
    )
    per_task = sequential_sqlite["seconds"] / sequential_sqlite["tasks"] * 1000
    print(
        f"sequential on SQLite: {per_task:.3f} ms per task (target <= 1 ms): "
        f"{'PASS' if per_task <= 1 else 'MISS'}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
