"""Automatic rollback of a bad canary through a real ``autoglm serve``.

One server (default settings: release tick 0.5 s, analysis window 60 s, error threshold 5%,
at least 20 requests) serves a registry model with two echo versions: ``v1`` (stable, never
fails) and ``v2`` (the candidate, failing ``--fail-rate`` of its calls). A release starts ``v2``
at 10% (steps 10,25,50,100, 60 s each) while an open-loop client (aiohttp, its own process)
sends chat completions at ``--rate`` per second for ``--duration`` seconds.

Two modes, same traffic (``auto`` ``--repeat`` times, the rollback moment varies with the tick):

- ``auto``: the release as shipped: analysis on live metrics, rollback when the threshold is
  crossed;
- ``no analysis``: the same release with no thresholds (as with a canary that a person watches,
  or one whose analysis runs only at the end of each step): it stays at 10% for the whole run.

Measured from what the client saw (``X-AutoGLM-Version`` on each answer; only ``v2`` fails):
the *threshold crossing* is the first moment the candidate's answers over the trailing window
held at least 20 requests with more than 5% errors; *time to 100% stable* is from that moment to
the send time of the last request the candidate served; failed requests are all non-200
answers.

    python bench/release_rollback.py [--rate 100] [--duration 20] [--fail-rate 0.2] [--repeat 5]
                                     [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving import free_port, launch

WINDOW_S, MIN_REQUESTS, MAX_ERROR_RATE = 60.0, 20, 0.05


@dataclass
class Outcome:
    sent: float
    done: float
    status: int
    version: str | None


def start_server(work: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    config_text = (
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        "policy: {enabled: false}\n"
        "models:\n  - name: echo\n    backend: echo\n"
    )
    process, key = launch(work, config_text, port)
    return process, port, key


def prepare(port: int, admin_key: str, model: str, fail_rate: float) -> tuple[str, str]:
    """Register ``model`` with v1 (stable) and a failing v2, both approved; returns
    (operator key, admin key)."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_key}"})
    operator_key = admin.post("/v1/admin/keys", json={"role": "operator"}).json()["secret"]
    operator = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {operator_key}"})
    operator.post("/v1/registry/models", json={"name": model}).raise_for_status()
    versions = f"/v1/registry/models/{model}/versions"
    for version, rate in (("v1", 0.0), ("v2", fail_rate)):
        spec = {"backend": "echo", "reply": f"{version} says hi", "fail_rate": rate, "seed": 7}
        operator.post(versions, json={"version": version, "instances": [spec]}).raise_for_status()
        operator.post(
            f"{versions}/{version}/transitions", json={"to": "pending_approval"}
        ).raise_for_status()
        admin.post(f"{versions}/{version}/transitions", json={"to": "deployed"}).raise_for_status()
    return operator_key, admin_key


async def run_load(
    port: int, key: str, model: str, rate: float, duration_s: float
) -> list[Outcome]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    total = int(rate * duration_s)

    async def one(session: aiohttp.ClientSession, n: int) -> Outcome:
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        sent = time.monotonic() - started
        try:
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                status, version = response.status, response.headers.get("x-autoglm-version")
        except aiohttp.ClientError:
            status, version = 0, None
        return Outcome(sent, time.monotonic() - started, status, version)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        return list(await asyncio.gather(*(one(session, n) for n in range(total))))


def threshold_crossed_at(outcomes: list[Outcome]) -> float | None:
    """When the candidate's trailing window first held >= 20 answers with > 5% errors."""
    candidate = sorted(
        (o for o in outcomes if o.version == "v2" or o.status != 200), key=lambda o: o.done
    )
    for index, outcome in enumerate(candidate):
        window = [o for o in candidate[: index + 1] if o.done > outcome.done - WINDOW_S]
        errors = sum(o.status != 200 for o in window)
        if len(window) >= MIN_REQUESTS and errors / len(window) > MAX_ERROR_RATE:
            return outcome.done
    return None


def run(
    port: int, admin_key: str, args: argparse.Namespace, auto: bool, attempt: int = 0
) -> dict[str, Any]:
    import httpx

    model = f"canary-auto-{attempt}" if auto else "canary-watched"
    operator_key, _ = prepare(port, admin_key, model, args.fail_rate)
    thresholds = (
        {}
        if auto
        else {"max_error_rate": None, "max_p99_latency_s": None, "min_requests": 1_000_000}
    )
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {operator_key}"}
    ) as operator:
        release = operator.post(
            "/v1/releases",
            json={"model": model, "candidate": "v2", "interval_s": 60, "thresholds": thresholds},
        ).json()
        outcomes = asyncio.run(run_load(port, operator_key, model, args.rate, args.duration))
        state = operator.get(f"/v1/releases/{release['id']}").json()
    crossed = threshold_crossed_at(outcomes)
    served_by_candidate = [o.sent for o in outcomes if o.version == "v2" or o.status != 200]
    last_candidate = max(served_by_candidate, default=None)
    return {
        "mode": "auto" if auto else "no analysis",
        "requests": len(outcomes),
        "candidate_requests": len(served_by_candidate),
        "failed": sum(o.status != 200 for o in outcomes),
        "threshold_crossed_s": crossed,
        "to_stable_s": (
            max(0.0, last_candidate - crossed)
            if crossed is not None and last_candidate is not None
            else None
        ),
        "release_state": state["state"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of traffic per run")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="the candidate's failures")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the auto mode")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"command": " ".join(sys.argv), "rows": []}
    with tempfile.TemporaryDirectory(prefix="autoglm-release-") as tmp:
        process, port, admin_key = start_server(Path(tmp))
        try:
            for attempt in range(args.repeat):
                print(f"run: auto {attempt + 1}/{args.repeat}", file=sys.stderr)
                report["rows"].append(run(port, admin_key, args, True, attempt))
            print("run: no analysis", file=sys.stderr)
            report["rows"].append(run(port, admin_key, args, False))
        finally:
            process.terminate()
            process.wait(timeout=20)
    print(
        f"{args.rate:.0f} req/s for {args.duration:.0f} s, candidate at 10% failing "
        f"{args.fail_rate:.0%}; rollback when > {MAX_ERROR_RATE:.0%} errors over "
        f"{WINDOW_S:.0f} s with >= {MIN_REQUESTS} requests"
    )
    print(
        f"{'mode':12} {'requests':>8} {'to cand.':>8} {'failed':>7} {'crossed at':>10} "
        f"{'to stable':>10} {'release':>12}"
    )
    for row in report["rows"]:
        crossed = row["threshold_crossed_s"]
        to_stable = row["to_stable_s"]
        print(
            f"{row['mode']:12} {row['requests']:>8} {row['candidate_requests']:>8} "
            f"{row['failed']:>7} {'-' if crossed is None else f'{crossed:.2f} s':>10} "
            f"{'-' if to_stable is None else f'{to_stable:.2f} s':>10} {row['release_state']:>12}"
        )
    *autos, watched = report["rows"]
    times = sorted(row["to_stable_s"] for row in autos if row["to_stable_s"] is not None)
    failed = sorted(row["failed"] for row in autos)
    if times:
        print(
            f"auto, {len(autos)} runs: to stable max {times[-1]:.2f} s (target <= 5 s), "
            f"median {times[len(times) // 2]:.2f} s; failed requests median "
            f"{failed[len(failed) // 2]}, max {failed[-1]}"
        )
    if failed[len(failed) // 2]:
        ratio = watched["failed"] / failed[len(failed) // 2]
        print(f"failed requests, no analysis / auto (median): {ratio:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
