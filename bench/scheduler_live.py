"""The scheduler live: mixed-priority traffic with deadlines through a real ``autoglm serve``.

The live version of ``scheduler_sim.py``. One server (1 worker, temporary data dir) serves a
model ``live``: the echo backend answering at ``--tokens-per-s`` with ``--slots`` concurrent
slots, so a 20-word prompt holds a slot for about 20 / tokens_per_s seconds. A seeded Poisson
client (aiohttp, its own process) sends chat completions at 80%, 100% and 120% of the measured
capacity, for ``--duration`` seconds each: 10% priority 0 with a 2 s deadline, 30% priority 4
with 5 s, 60% priority 9 with 20 s.

Two runs per load, same arrival times and prompts:

- ``ours``: each request carries ``priority`` and ``deadline_ms``: the scheduler orders by
  priority and deadline and refuses early what cannot make it;
- ``fifo``: the same requests without them: the scheduler sees one class and no deadlines, so
  it serves in arrival order (its queue bound still applies).

A request *made it* when it answered 200 within its own deadline, measured by the client.
Printed: miss rate per priority, p99 latency per priority, goodput (made it per second).

    python bench/scheduler_live.py [--duration 20] [--slots 4] [--tokens-per-s 50] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving import free_port, launch

MIX = ((0, 0.1, 2.0), (4, 0.3, 5.0), (9, 0.6, 20.0))  # (priority, share, deadline s)
WORDS = 20


@dataclass
class Result:
    priority: int
    deadline_s: float
    status: int
    latency_s: float

    @property
    def made_it(self) -> bool:
        return self.status == 200 and self.latency_s <= self.deadline_s


def start_server(
    work: Path, slots: int, tokens_per_s: float
) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    config_text = (
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        "policy: {enabled: false}\naudit: {enabled: false}\n"
        "models:\n"
        "  - name: live\n    backend: echo\n"
        f"    tokens_per_s: {tokens_per_s}\n    max_concurrency: {slots}\n"
        "    scheduler: {max_queue: 200}\n"
    )
    process, key = launch(work, config_text, port)
    return process, port, key


def arrivals(rate: float, duration_s: float, seed: int) -> list[tuple[float, int, float]]:
    rng = random.Random(seed)
    plan, now = [], 0.0
    while True:
        now += rng.expovariate(rate)
        if now >= duration_s:
            return plan
        pick, acc = rng.random(), 0.0
        for priority, share, deadline in MIX:
            acc += share
            if pick < acc:
                plan.append((now, priority, deadline))
                break


async def run_load(
    port: int, key: str, plan: list[tuple[float, int, float]], scheduled: bool
) -> list[Result]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    prompt = " ".join(["w"] * WORDS)

    async def one(
        session: aiohttp.ClientSession, at: float, priority: int, deadline: float
    ) -> Result:
        await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
        body: dict[str, Any] = {"model": "live", "messages": [{"role": "user", "content": prompt}]}
        if scheduled:
            body.update(priority=priority, deadline_ms=int(deadline * 1000))
        begun = time.monotonic()
        try:
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0
        return Result(priority, deadline, status, time.monotonic() - begun)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        return list(await asyncio.gather(*(one(session, *item) for item in plan)))


def summarise(results: list[Result], duration_s: float) -> dict[str, Any]:
    row: dict[str, Any] = {"goodput_per_s": sum(r.made_it for r in results) / duration_s}
    for priority, _, _ in MIX:
        mine = [r for r in results if r.priority == priority]
        latencies = sorted(r.latency_s for r in mine)
        row[f"miss_p{priority}"] = 1 - sum(r.made_it for r in mine) / max(1, len(mine))
        row[f"p99_p{priority}_s"] = latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--loads", default="0.8,1.0,1.2")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    service_s = WORDS / args.tokens_per_s
    capacity = args.slots / service_s
    report: dict[str, Any] = {"command": " ".join(sys.argv), "capacity_per_s": capacity, "rows": []}
    with tempfile.TemporaryDirectory(prefix="autoglm-live-") as tmp:
        process, port, key = start_server(Path(tmp), args.slots, args.tokens_per_s)
        try:
            for load in (float(x) for x in args.loads.split(",")):
                plan = arrivals(capacity * load, args.duration, args.seed)
                for policy, scheduled in (("ours", True), ("fifo", False)):
                    print(f"load {load:.0%} {policy}: {len(plan)} requests", file=sys.stderr)
                    results = asyncio.run(run_load(port, key, plan, scheduled))
                    time.sleep(service_s * 4)  # let the queue drain between runs
                    row = {"load": load, "policy": policy, **summarise(results, args.duration)}
                    report["rows"].append(row)
        finally:
            process.terminate()
            process.wait(timeout=20)
    print(
        f"capacity {capacity:.1f} req/s ({args.slots} slots x {service_s:.2f} s), "
        f"{args.duration:.0f} s per run, seed {args.seed}"
    )
    print(
        f"{'load':>5} {'policy':6} {'miss p0':>8} {'miss p4':>8} {'miss p9':>8} "
        f"{'p99 p0':>7} {'p99 p4':>7} {'p99 p9':>7} {'goodput/s':>10}"
    )
    for row in report["rows"]:
        print(
            f"{row['load']:>5.0%} {row['policy']:6} {row['miss_p0']:>8.1%} {row['miss_p4']:>8.1%}"
            f" {row['miss_p9']:>8.1%} {row['p99_p0_s']:>6.2f}s {row['p99_p4_s']:>6.2f}s"
            f" {row['p99_p9_s']:>6.2f}s {row['goodput_per_s']:>10.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
