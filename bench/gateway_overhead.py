"""Gateway overhead (issues 2-5): what ``autoglm serve`` costs on top of a bare proxy.

Seven targets answer the same small non-streamed chat completion, all on 127.0.0.1:

  (a) direct   a fake OpenAI-compatible upstream (raw ASGI on uvicorn + uvloop + httptools)
               that answers instantly with a fixed chat.completion;
  (b) proxy    a bare pass-through with the same server stack and a pooled aiohttp client:
               the floor;
  (c) autoglm  ``autoglm serve`` (1 worker, temporary data dir, one ``openai`` model pointing
               at (a)), called with the platform-admin key: auth, validation, routing, backend,
               response building (the issue-2 serving core: no limits, no Redis, no policy,
               no audit log);
  (d) limits   a second ``autoglm serve`` process (own data dir, same upstream) with ``redis_url``
               set, called with a developer key whose limits are far above the load: every
               request runs the rate limiter's acquire and settle Lua scripts in Redis, none is
               refused;
  (e) context  the same server as (d), every request naming a conversation context
               (``X-AutoGLM-Context-Id``): load and window the history, call, store the turn
               pair. With wrk a Lua ``request()`` rotates over 64 context ids, with the Python
               generator each client has its own. Informational (two SQLite writes per request).
  (f) governed a third ``autoglm serve`` with the issue-4 governance on: a global policy of
               10,000 keywords (input and output, blocking) plus every PII recogniser (masking,
               input and output), and the audit log (one hash-chained event per request, written
               in batches, content mode ``hash``). Its target: within 25% of (c).
  (g) instances a fourth ``autoglm serve`` whose model has three instances (all pointing at (a))
               behind the scheduler and smooth weighted round robin, policy and audit off: what
               balancing across replicas costs. Its target: within 20% of (c).

Each target gets a warm-up, then ``--concurrency`` clients for ``--duration`` seconds, then one
client for ``--c1-duration`` seconds. The load generator is ``wrk`` when it is on PATH, else a
Python aiohttp generator in its own process. Rounds interleave the targets; the table shows the
median of each number over the rounds.

Invariants: every process it starts is stopped before it exits (also on Ctrl-C or an error),
every loop is bounded by time, and a run where any response was not 200 is reported as invalid;
so is a run where (d)/(e) did not really use Redis (the limiter's local fallback took over) or
(e) stored no turns. Redis keys are only written under the bench key's own scope
(``autoglm:rl:key:<id>:*``, deleted at the end) and lease records that expire by themselves;
the Redis database is never flushed.

    python bench/gateway_overhead.py [--duration 10] [--concurrency 64] [--rounds 1]
        [--generator auto|wrk|python] [--redis-url redis://127.0.0.1:6379/13] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHAT_PATH = "/v1/chat/completions"
MODEL_NAME = "bench-upstream"
REQUEST_BODY = json.dumps(
    {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16},
    separators=(",", ":"),
).encode()
UPSTREAM_COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": MODEL_NAME,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}
TARGET_RPS_AUTOGLM = 1500.0  # issues 2 and 3: requests/s through autoglm at 64 concurrency
TARGET_ADDED_P50_MS = 2.0  # issues 2 and 3: p50 added latency at concurrency 1
TARGET_LIMITS_OVER_CORE = 0.8  # issue 3: (d) within 20% of (c) requests/s
TARGET_GOVERNED_OVER_CORE = 0.75  # issue 4: (f) within 25% of (c) requests/s
TARGET_INSTANCES_OVER_CORE = 0.8  # issue 5: (g) within 20% of (c) requests/s
TARGETS = ("direct", "proxy", "autoglm", "limits", "context", "governed", "instances")
LABELS = {
    "direct": "(a) upstream direct",
    "proxy": "(b) bare proxy",
    "autoglm": "(c) autoglm",
    "limits": "(d) autoglm + redis limits",
    "context": "(e) autoglm + limits + context",
    "governed": "(f) autoglm + policies + audit",
    "instances": "(g) autoglm, 3 instances + scheduler",
}
UNGOVERNED = "policy: {enabled: false}\naudit: {enabled: false}\n"
NUM_KEYWORDS = 10_000
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
RATE_LIMIT_PREFIX = "autoglm:rl:"  # the server's default key prefix (limits.redis_limiter)
# Far above anything one machine can send: every request is limited (acquire + settle scripts),
# none is refused.
GENEROUS_LIMITS = {
    "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": 1_000_000_000_000,
    "max_concurrent": 100_000,
}
CONTEXT_HEADER = "X-AutoGLM-Context-Id"
NUM_CONTEXTS = 64
CONTEXT_MAX_TURNS = 4
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0


# --- servers (child processes)


async def _drain(receive: Callable[[], Any]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


def upstream_app() -> Callable[..., Any]:
    """The fake upstream: a fixed chat.completion for ``POST /v1/chat/completions``, else 404."""
    completion = json.dumps(UPSTREAM_COMPLETION).encode()
    not_found = b'{"error":{"message":"not found","type":"invalid_request_error"}}'

    async def app(
        scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]
    ) -> None:
        await _drain(receive)
        found = scope["method"] == "POST" and scope["path"] == CHAT_PATH
        body = completion if found else not_found
        await send(
            {
                "type": "http.response.start",
                "status": 200 if found else 404,
                "headers": _json_headers(body),
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def proxy_app(upstream_base_url: str) -> Callable[..., Any]:
    """The floor: forwards the body to the upstream over a pooled session, returns its bytes."""
    import aiohttp

    sessions: list[aiohttp.ClientSession] = []
    forward_headers = {"Content-Type": "application/json"}

    async def lifespan(receive: Callable[[], Any], send: Callable[..., Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60)
                sessions.append(aiohttp.ClientSession(connector=connector))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await sessions[0].close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(
        scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await _drain(receive)
        url = upstream_base_url + scope["path"]
        async with sessions[0].post(url, data=body, headers=forward_headers) as response:
            payload = await response.read()
            status = response.status
        await send(
            {"type": "http.response.start", "status": status, "headers": _json_headers(payload)}
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def serve(kind: str, port: int, upstream_base_url: str | None) -> None:
    import uvicorn

    app = upstream_app() if kind == "upstream" else proxy_app(upstream_base_url or "")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off" if kind == "upstream" else "on",
        access_log=False,
        log_level="warning",
    )


# --- load generators


@dataclass
class LoadResult:
    """One load run against one target at one concurrency."""

    concurrency: int
    num_requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def bad_responses(self) -> int:
        """Responses that were not 200, plus requests that failed at the socket."""
        non_200 = sum(count for status, count in self.statuses.items() if status != "200")
        return non_200 + sum(self.socket_errors.values())


@dataclass(frozen=True)
class LoadSpec:
    url: str
    headers: dict[str, str]
    concurrency: int
    duration_s: int
    # > 0: each request carries a context id header, ``bench-ctx-<n>`` with n < contexts (wrk:
    # rotating per request; Python generator: one per client, modulo ``contexts``).
    contexts: int = 0

    def with_load(self, concurrency: int, duration_s: int) -> LoadSpec:
        return LoadSpec(self.url, self.headers, concurrency, duration_s, self.contexts)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {{}} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local parts = {{}}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do parts[code] = (parts[code] or 0) + n end
  end
  local codes = {{}}
  for code, n in pairs(parts) do table.insert(codes, string.format('"%d":%d', code, n)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"statuses":{{%s}},' ..
    '"socket_errors":{{"connect":%d,"read":%d,"write":%d,"timeout":%d}}}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    table.concat(codes, ","), e.connect, e.read, e.write, e.timeout))
end
"""

# Appended for a spec with contexts: request n names context n % contexts. With one wrk thread
# and as many connections as contexts, the requests in flight are consecutive, so a context is
# mostly used by one connection at a time.
WRK_CONTEXT_SCRIPT = """
local sent = 0
function request()
  wrk.headers["%(header)s"] = "bench-ctx-" .. (sent %% %(contexts)d)
  sent = sent + 1
  return wrk.format()
end
"""


def run_wrk(spec: LoadSpec, work_dir: Path) -> LoadResult:
    """``wrk --latency`` with a Lua script that sends the body and counts statuses."""
    headers = {"Content-Type": "application/json", **spec.headers}
    lua_headers = "\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())
    script = work_dir / "post.lua"
    text = WRK_SCRIPT.format(body=REQUEST_BODY.decode(), headers=lua_headers)
    if spec.contexts:
        text += WRK_CONTEXT_SCRIPT % {"header": CONTEXT_HEADER, "contexts": spec.contexts}
    script.write_text(text)
    command = [
        "wrk",
        "-t1",
        f"-c{spec.concurrency}",
        f"-d{spec.duration_s}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        spec.url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=spec.duration_s + 30)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("BENCH_RESULT "))
    duration_s = raw["duration_us"] / 1e6
    return LoadResult(
        concurrency=spec.concurrency,
        num_requests=raw["requests"],
        duration_s=duration_s,
        rps=raw["requests"] / duration_s,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        statuses=raw["statuses"],
        socket_errors={k: v for k, v in raw["socket_errors"].items() if v},
    )


async def _python_load(spec: LoadSpec, max_requests: int) -> dict[str, Any]:
    import aiohttp

    latencies_s: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    headers = {"Content-Type": "application/json", **spec.headers}
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        deadline = started + spec.duration_s

        async def client(index: int) -> None:
            own_headers = headers
            if spec.contexts:
                own_headers = {**headers, CONTEXT_HEADER: f"bench-ctx-{index % spec.contexts}"}
            while (
                time.perf_counter() < deadline
                and len(latencies_s) + sum(errors.values()) < max_requests
            ):
                sent = time.perf_counter()
                try:
                    async with session.post(
                        spec.url, data=REQUEST_BODY, headers=own_headers
                    ) as response:
                        await response.read()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies_s.append(time.perf_counter() - sent)
                statuses[str(response.status)] += 1

        await asyncio.gather(*(client(index) for index in range(spec.concurrency)))
        elapsed_s = time.perf_counter() - started
    latencies_s.sort()

    def percentile_ms(q: float) -> float:
        return (
            latencies_s[min(len(latencies_s) - 1, int(q * len(latencies_s)))] * 1000
            if latencies_s
            else 0.0
        )

    return asdict(
        LoadResult(
            concurrency=spec.concurrency,
            num_requests=len(latencies_s),
            duration_s=elapsed_s,
            rps=len(latencies_s) / elapsed_s,
            p50_ms=percentile_ms(0.50),
            p99_ms=percentile_ms(0.99),
            statuses=dict(statuses),
            socket_errors=dict(errors),
        )
    )


def load_worker(spec_json: str) -> None:
    """Child-process entry of the Python generator: run one load, print the result as JSON."""
    import uvloop

    spec = LoadSpec(**json.loads(spec_json))
    max_requests = 2_000_000  # a bound besides time; far above what one process can send here
    print(json.dumps(uvloop.run(_python_load(spec, max_requests))))


def run_python(spec: LoadSpec, work_dir: Path) -> LoadResult:
    """The aiohttp generator, in its own process: it must not share an event loop with us."""
    command = [sys.executable, __file__, "--load-worker", json.dumps(asdict(spec))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=spec.duration_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"load worker failed ({done.returncode}):\n{done.stderr}")
    return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))


# --- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Fleet:
    """The server processes of one benchmark; ``stop`` ends each of them by its own id."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.work_dir / f"{name}.log").open("wb")
        # Own session: a Ctrl-C in the terminal reaches us, and we stop the servers in order.
        self._processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def pid(self, name: str) -> int:
        return self._processes[name].pid

    def wait_until(self, name: str, is_ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited at start:\n{self.log_tail(name)}")
            if is_ready():
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"{name} not ready after {START_TIMEOUT_S:.0f} s:\n{self.log_tail(name)}"
        )

    def cpu_seconds(self, name: str) -> float | None:
        """User + system CPU time of one server process so far (Linux ``/proc``; else None)."""
        try:
            fields = Path(f"/proc/{self._processes[name].pid}/stat").read_text().rsplit(")", 1)[1]
        except OSError:
            return None
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, name: str, num_chars: int = 3000) -> str:
        return (self.work_dir / f"{name}.log").read_text(errors="replace")[-num_chars:]

    def stop(self) -> None:
        for process in reversed(list(self._processes.values())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self._processes.values():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        names = {name.lower(): value for name, value in response.getheaders()}
        return response.status, names, response.read()
    finally:
        connection.close()


def http_status(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    status, _, payload = http_request(port, method, path, body, headers)
    return status, payload


def answers(port: int, path: str = "/") -> Callable[[], bool]:
    def check() -> bool:
        try:
            http_status(port, "GET", path)
        except OSError:
            return False
        return True

    return check


def autoglm_command() -> list[str]:
    beside_python = Path(sys.executable).parent / "autoglm"
    found = str(beside_python) if beside_python.exists() else shutil.which("autoglm")
    if found is None:
        raise RuntimeError("`autoglm` is not installed: pip install -e . in the project first")
    return [found]


def start_autoglm(
    fleet: Fleet, name: str, upstream_port: int, extra_config: str = ""
) -> tuple[int, str]:
    """``autoglm serve`` on a fresh data dir of its own; returns its port and the admin key."""
    port = free_port()
    data_dir = fleet.work_dir / f"{name}-data"
    config = fleet.work_dir / f"{name}.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, workers: 1}}\n"
        "models:\n"
        f"  - name: {MODEL_NAME}\n"
        "    backend: openai\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n" + extra_config
    )
    # Only our settings: an AUTOGLM_* variable of the caller's shell must not change the benchmark.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    env["AUTOGLM_DATA_DIR"] = str(data_dir)
    fleet.start(name, [*autoglm_command(), "serve", "--config", str(config)], env)
    key_file = data_dir / "admin.key"
    fleet.wait_until(name, lambda: key_file.exists() and answers(port, "/healthz")())
    return port, key_file.read_text().strip()


def open_redis(redis_url: str) -> Any:
    """A client for the benchmark's own checks; stops here if Redis does not answer."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(
            f"Redis at {redis_url} does not answer ({exc}); targets (d) and (e) need it "
            "(--redis-url)"
        ) from exc
    return client


def issue_limited_key(port: int, admin_key: str) -> tuple[str, str]:
    """A developer key with ``GENEROUS_LIMITS``; returns its id and secret."""
    body = json.dumps({"role": "developer", "name": "bench", "limits": GENEROUS_LIMITS}).encode()
    headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}
    status, payload = http_status(port, "POST", "/v1/admin/keys", body, headers)
    if status != 201:
        raise RuntimeError(f"creating the limited key failed: {status} {payload[:500]!r}")
    created = json.loads(payload)
    return created["id"], created["secret"]


@dataclass
class LimitsServer:
    """The (d)/(e) server: how to reach it, its key, and the Redis it limits with."""

    name: str
    port: int
    headers: dict[str, str]
    key_id: str
    redis: Any

    def rate_limit_keys(self) -> list[bytes]:
        """This key's rate-limit keys in Redis (its scope only; other keys are never touched)."""
        pattern = f"{RATE_LIMIT_PREFIX}key:{self.key_id}:*"
        return list(self.redis.scan_iter(match=pattern, count=1000))

    def cleanup(self) -> None:
        keys = self.rate_limit_keys()
        if keys:
            self.redis.delete(*keys)
        self.redis.close()


def start_fleet(fleet: Fleet, redis_url: str) -> tuple[dict[str, LoadSpec], LimitsServer]:
    """Start the servers; the spec of each target at concurrency 1 (a template)."""
    redis_client = open_redis(redis_url)
    upstream_port, proxy_port = free_port(), free_port()
    this = [sys.executable, __file__, "--serve"]
    fleet.start("upstream", [*this, "upstream", "--port", str(upstream_port)])
    fleet.start(
        "proxy",
        [
            *this,
            "proxy",
            "--port",
            str(proxy_port),
            "--upstream",
            f"http://127.0.0.1:{upstream_port}",
        ],
    )
    fleet.wait_until("upstream", answers(upstream_port))
    fleet.wait_until("proxy", answers(proxy_port))
    autoglm_port, key = start_autoglm(fleet, "autoglm", upstream_port, UNGOVERNED)
    limits_port, limits_admin_key = start_autoglm(
        fleet,
        "autoglm-limits",
        upstream_port,
        f"redis_url: {json.dumps(redis_url)}\n"
        f"contexts: {{default_max_turns: {CONTEXT_MAX_TURNS}}}\n" + UNGOVERNED,
    )
    governed_port, governed_key = start_autoglm(fleet, "autoglm-governed", upstream_port)
    apply_bench_policy(governed_port, governed_key)
    three = "    instances: [{name: r1}, {name: r2}, {name: r3}]\n"
    instances_port, instances_key = start_autoglm(
        fleet, "autoglm-instances", upstream_port, three + UNGOVERNED
    )
    key_id, secret = issue_limited_key(limits_port, limits_admin_key)
    limited = LimitsServer(
        "autoglm-limits", limits_port, {"Authorization": f"Bearer {secret}"}, key_id, redis_client
    )

    def spec(port: int, headers: dict[str, str], contexts: int = 0) -> LoadSpec:
        return LoadSpec(f"http://127.0.0.1:{port}{CHAT_PATH}", headers, 1, 1, contexts)

    specs = {
        "direct": spec(upstream_port, {}),
        "proxy": spec(proxy_port, {}),
        "autoglm": spec(autoglm_port, {"Authorization": f"Bearer {key}"}),
        "limits": spec(limits_port, limited.headers),
        "context": spec(limits_port, limited.headers, NUM_CONTEXTS),
        "governed": spec(governed_port, {"Authorization": f"Bearer {governed_key}"}),
        "instances": spec(instances_port, {"Authorization": f"Bearer {instances_key}"}),
    }
    for name, target in specs.items():
        check_one_request(name, target)
    check_limits_and_context(limited)
    return specs, limited


def bench_policy() -> str:
    """A global policy: 10,000 keywords (60% Chinese, none in the bench's texts) and all PII."""
    import random

    rng = random.Random(4)
    common = [chr(cp) for cp in range(0x4E00, 0x4E00 + 3000)]
    words: set[str] = set()
    while len(words) < NUM_KEYWORDS:
        if rng.random() < 0.6:
            words.add("".join(rng.choice(common) for _ in range(rng.randint(2, 4))))
        else:
            words.add("zq" + "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(6)))
    return json.dumps(
        {
            "rules": [
                {"id": "bench-words", "type": "words", "words": sorted(words), "action": "block"},
                {
                    "id": "bench-pii",
                    "type": "pii",
                    "kinds": ["mobile", "id_card", "bank_card", "email", "ipv4", "ipv6"],
                    "action": "mask",
                },
            ]
        },
        ensure_ascii=False,
    )


def apply_bench_policy(port: int, admin_key: str) -> None:
    body = json.dumps({"document": bench_policy()}, ensure_ascii=False).encode()
    headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}
    status, payload = http_status(port, "PUT", "/v1/admin/policies/global", body, headers)
    if status != 201:
        raise RuntimeError(f"applying the bench policy failed: {status} {payload[:500]!r}")


def check_audit(port: int, admin_key: str, min_events: int) -> list[Problem]:
    """After the run: (f) wrote an event per request and its chain verifies."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    status, body = http_status(port, "GET", "/v1/audit/events?limit=1", headers=headers)
    newest = json.loads(body)["data"] if status == 200 else []
    problems = []
    if not newest or newest[0]["seq"] < min_events:
        problems.append(Problem("governed", f"fewer than {min_events} audit events were written"))
    status, body = http_status(port, "GET", "/v1/audit/verify", headers=headers)
    if status != 200 or not json.loads(body)["ok"]:
        problems.append(Problem("governed", f"the audit chain does not verify: {body[:300]!r}"))
    return problems


def check_one_request(name: str, spec: LoadSpec) -> dict[str, str]:
    """One request before the load: a 200 with a well-formed chat.completion, or stop here."""
    port = int(spec.url.split(":")[2].split("/")[0])
    headers = {"Content-Type": "application/json", **spec.headers}
    status, response_headers, body = http_request(port, "POST", CHAT_PATH, REQUEST_BODY, headers)
    payload = json.loads(body) if status == 200 else {}
    if payload.get("object") != "chat.completion" or not payload.get("usage"):
        raise RuntimeError(f"{name}: unexpected answer {status}: {body[:500]!r}")
    return response_headers


def check_limits_and_context(server: LimitsServer) -> None:
    """Before the load: (d)'s requests are limited in Redis, (e)'s land in a context."""
    spec = LoadSpec(f"http://127.0.0.1:{server.port}{CHAT_PATH}", server.headers, 1, 1)
    headers = check_one_request("limits", spec)
    if "x-ratelimit-limit-requests" not in headers:
        raise RuntimeError(f"limits: no x-ratelimit-* headers, limits not applied: {headers}")
    if not server.rate_limit_keys():
        raise RuntimeError(f"limits: no rate-limit keys for key {server.key_id} in Redis")
    context_id = "bench-ctx-check"
    check_one_request(
        "context", LoadSpec(spec.url, {**server.headers, CONTEXT_HEADER: context_id}, 1, 1)
    )
    turns = stored_turns(server, context_id)
    if turns != 2:
        raise RuntimeError(f"context: expected 2 stored turns after one call, found {turns}")


def stored_turns(server: LimitsServer, context_id: str) -> int | None:
    status, body = http_status(
        server.port, "GET", f"/v1/contexts/{context_id}?include_turns=false", headers=server.headers
    )
    return json.loads(body)["num_turns"] if status == 200 else None


@dataclass(frozen=True)
class Problem:
    """Something that makes a target's numbers invalid."""

    target: str
    text: str


def check_after_load(server: LimitsServer, fleet: Fleet) -> list[Problem]:
    """After the rounds: Redis served every limited request, and the contexts were written."""
    problems = []
    log = fleet.log_tail(server.name, 2_000_000)
    if "is unreachable" in log:
        for target in ("limits", "context"):
            problems.append(
                Problem(
                    target,
                    "the Redis limiter fell back to the local limiter during the run (see "
                    "its log): these numbers are not Redis's",
                )
            )
    if not server.rate_limit_keys():
        problems.append(
            Problem("limits", f"no rate-limit keys for key {server.key_id} in Redis after the run")
        )
    concurrency_key = f"{RATE_LIMIT_PREFIX}key:{server.key_id}:conc"
    unsettled = server.redis.zcard(concurrency_key)
    if unsettled:
        problems.append(Problem("limits", f"{unsettled} concurrency leases left unsettled"))
    num_locked = log.count("database is locked")
    if num_locked:
        problems.append(
            Problem(
                "context",
                f"'database is locked' appears {num_locked} times in the server log (SQLite "
                "write lock held by another connection; see BENCHMARKS.md, issue 3)",
            )
        )
    turns = stored_turns(server, "bench-ctx-0")
    if not turns or turns > CONTEXT_MAX_TURNS:
        problems.append(
            Problem(
                "context",
                f"bench-ctx-0 holds {turns} turns after the run (expected 1..{CONTEXT_MAX_TURNS})",
            )
        )
    return problems


# --- measurement


@dataclass
class TargetRound:
    loaded: LoadResult
    single: LoadResult
    # CPU the target's own server process spent per request in the loaded run: unlike requests/s
    # this barely moves when other work competes for the cores.
    cpu_us_per_request: float | None


SERVER_OF = {
    "direct": "upstream",
    "proxy": "proxy",
    "autoglm": "autoglm",
    "limits": "autoglm-limits",
    "context": "autoglm-limits",
    "governed": "autoglm-governed",
    "instances": "autoglm-instances",
}


def measure_round(
    specs: dict[str, LoadSpec],
    args: argparse.Namespace,
    generate: Callable[[LoadSpec, Path], LoadResult],
    fleet: Fleet,
) -> dict[str, TargetRound]:
    results = {}
    for name in TARGETS:
        base = specs[name]
        print(
            f"  {name}: warm-up {args.warmup} s, {args.concurrency} clients {args.duration} s, "
            f"1 client {args.c1_duration} s",
            file=sys.stderr,
            flush=True,
        )
        generate(base.with_load(args.concurrency, args.warmup), fleet.work_dir)
        cpu_before_s = fleet.cpu_seconds(SERVER_OF[name])
        loaded = generate(base.with_load(args.concurrency, args.duration), fleet.work_dir)
        cpu_after_s = fleet.cpu_seconds(SERVER_OF[name])
        single = generate(base.with_load(1, args.c1_duration), fleet.work_dir)
        cpu_us = None
        if cpu_before_s is not None and cpu_after_s is not None and loaded.num_requests:
            cpu_us = (cpu_after_s - cpu_before_s) / loaded.num_requests * 1e6
        results[name] = TargetRound(loaded=loaded, single=single, cpu_us_per_request=cpu_us)
    return results


def summarise(round_: dict[str, TargetRound]) -> dict[str, float]:
    """The derived numbers of one round (ratios and added latencies within the same round)."""
    summary = {}
    for name, result in round_.items():
        summary[f"{name}_rps"] = result.loaded.rps
        summary[f"{name}_p50_ms"] = result.loaded.p50_ms
        summary[f"{name}_p99_ms"] = result.loaded.p99_ms
        summary[f"{name}_c1_p50_ms"] = result.single.p50_ms
        summary[f"{name}_c1_p99_ms"] = result.single.p99_ms
        summary[f"{name}_c1_added_p50_ms"] = result.single.p50_ms - round_["direct"].single.p50_ms
        if result.cpu_us_per_request is not None:
            summary[f"{name}_cpu_us_per_request"] = result.cpu_us_per_request
    summary["autoglm_over_proxy_rps"] = summary["autoglm_rps"] / summary["proxy_rps"]
    summary["limits_over_autoglm_rps"] = summary["limits_rps"] / summary["autoglm_rps"]
    summary["context_over_limits_rps"] = summary["context_rps"] / summary["limits_rps"]
    summary["governed_over_autoglm_rps"] = summary["governed_rps"] / summary["autoglm_rps"]
    summary["instances_over_autoglm_rps"] = summary["instances_rps"] / summary["autoglm_rps"]
    summary["governed_c1_over_autoglm_p50_ms"] = (
        summary["governed_c1_p50_ms"] - summary["autoglm_c1_p50_ms"]
    )
    summary["limits_c1_over_autoglm_p50_ms"] = (
        summary["limits_c1_p50_ms"] - summary["autoglm_c1_p50_ms"]
    )
    return summary


def bad_runs(rounds: list[dict[str, TargetRound]]) -> list[Problem]:
    """Runs with a non-200, a socket error, or no answer at all."""
    problems = []
    for index, round_ in enumerate(rounds, 1):
        for name, result in round_.items():
            for run in (result.loaded, result.single):
                if run.bad_responses or not run.num_requests:
                    problems.append(
                        Problem(
                            name,
                            f"round {index} c={run.concurrency}: {run.num_requests} answers, "
                            f"statuses {run.statuses}, socket errors {run.socket_errors}",
                        )
                    )
    return problems


# --- report


def print_report(
    median: dict[str, float],
    args: argparse.Namespace,
    meta: dict[str, Any],
    problems: list[Problem],
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    rounds_note = f"median of {args.rounds} rounds" if args.rounds > 1 else "1 round"
    table = Table(title=f"Gateway overhead, 127.0.0.1, {rounds_note}")
    for column in (
        "target",
        f"RPS @{args.concurrency}",
        f"p50 @{args.concurrency}",
        f"p99 @{args.concurrency}",
        "p50 @1",
        "p99 @1",
        "added p50 @1 vs direct",
        "server CPU / req",
    ):
        table.add_column(column, justify="left" if column == "target" else "right")
    invalid = {problem.target for problem in problems}
    for name in TARGETS:
        added = "-" if name == "direct" else f"{median[f'{name}_c1_added_p50_ms']:+.3f} ms"
        table.add_row(
            LABELS[name] + (" [yellow]INVALID[/]" if name in invalid else ""),
            f"{median[f'{name}_rps']:,.0f}",
            f"{median[f'{name}_p50_ms']:.2f} ms",
            f"{median[f'{name}_p99_ms']:.2f} ms",
            f"{median[f'{name}_c1_p50_ms']:.3f} ms",
            f"{median[f'{name}_c1_p99_ms']:.3f} ms",
            added,
            _cpu_cell(median.get(f"{name}_cpu_us_per_request")),
        )
    console.print(table)
    console.print(
        f"autoglm RPS / bare proxy RPS: [bold]{median['autoglm_over_proxy_rps']:.2f}[/bold]"
    )
    console.print(
        f"(d) limits RPS / (c) autoglm RPS: [bold]{median['limits_over_autoglm_rps']:.2f}[/bold]; "
        f"(d) adds {median['limits_c1_over_autoglm_p50_ms']:+.3f} ms p50 over (c) at one "
        f"connection; (e) context RPS / (d) RPS: {median['context_over_limits_rps']:.2f}"
    )
    console.print(
        f"(f) governed RPS / (c) autoglm RPS: [bold]{median['governed_over_autoglm_rps']:.2f}"
        f"[/bold]; (f) adds {median['governed_c1_over_autoglm_p50_ms']:+.3f} ms p50 over (c) "
        "at one connection"
    )
    for name in ("autoglm", "limits", "context", "governed"):
        if f"{name}_cpu_us_per_request" in median:
            cpu_us = median[f"{name}_cpu_us_per_request"]
            console.print(
                f"{LABELS[name]} spends {cpu_us:.0f} µs of CPU per request: at most "
                f"~{1e6 / cpu_us:,.0f} req/s from one worker with a whole core to itself"
            )
    console.print(
        f"load generator: [bold]{meta['generator']}[/bold]; {meta['cpu_count']} CPU cores shared "
        "by the load generator and the servers (no pinning), so absolute numbers are a floor."
    )
    console.print(
        f"load average (1 min) before / after: {meta['load_before']:.2f} / {meta['load_after']:.2f}"
        " (other work on the machine makes the numbers noisy)"
    )
    print_verdict(console, median, problems)


def _cpu_cell(cpu_us: float | None) -> str:
    return "-" if cpu_us is None else f"{cpu_us:.0f} µs"


def verdict(median: dict[str, float], problems: list[Problem]) -> dict[str, str]:
    """Issue 2 ((c) alone) and issue 3 ((d): the same bars, and within 20% of (c)).

    A verdict is INVALID when a target it reads had a problem; (e) is in none of them.
    """
    invalid = {problem.target for problem in problems}

    def passes(ok: bool, *targets: str) -> str:
        if invalid.intersection(targets):
            return "INVALID"
        return "PASS" if ok else "FAIL"

    i2, i3 = ("direct", "autoglm"), ("direct", "autoglm", "limits")
    return {
        "rps": passes(median["autoglm_rps"] >= TARGET_RPS_AUTOGLM, *i2),
        "added_p50": passes(median["autoglm_c1_added_p50_ms"] <= TARGET_ADDED_P50_MS, *i2),
        "i3_rps": passes(median["limits_rps"] >= TARGET_RPS_AUTOGLM, *i3),
        "i3_ratio": passes(median["limits_over_autoglm_rps"] >= TARGET_LIMITS_OVER_CORE, *i3),
        "i3_added_p50": passes(median["limits_c1_added_p50_ms"] <= TARGET_ADDED_P50_MS, *i3),
        "i5_ratio": passes(
            median["instances_over_autoglm_rps"] >= TARGET_INSTANCES_OVER_CORE,
            "direct",
            "autoglm",
            "instances",
        ),
        "i4_ratio": passes(
            median["governed_over_autoglm_rps"] >= TARGET_GOVERNED_OVER_CORE,
            "direct",
            "autoglm",
            "governed",
        ),
    }


def print_verdict(console: Any, median: dict[str, float], problems: list[Problem]) -> None:
    outcome = verdict(median, problems)
    colour = {"PASS": "green", "FAIL": "red", "INVALID": "yellow"}

    def line(text: str, measured: str, key: str) -> None:
        console.print(f"{text}: {measured} -> [{colour[outcome[key]]}]{outcome[key]}[/]")

    line(
        f"issue 2 target: >= {TARGET_RPS_AUTOGLM:,.0f} req/s through (c) autoglm at 64 concurrency",
        f"{median['autoglm_rps']:,.0f}",
        "rps",
    )
    line(
        f"issue 2 target: (c) p50 added latency <= {TARGET_ADDED_P50_MS} ms at concurrency 1",
        f"{median['autoglm_c1_added_p50_ms']:.3f} ms",
        "added_p50",
    )
    line(
        f"issue 3 target: >= {TARGET_RPS_AUTOGLM:,.0f} req/s through (d) autoglm + redis limits",
        f"{median['limits_rps']:,.0f}",
        "i3_rps",
    )
    line(
        f"issue 3 target: (d) within {1 - TARGET_LIMITS_OVER_CORE:.0%} of (c) requests/s "
        f"(ratio >= {TARGET_LIMITS_OVER_CORE})",
        f"{median['limits_over_autoglm_rps']:.2f}",
        "i3_ratio",
    )
    line(
        f"issue 3 target: (d) p50 added latency <= {TARGET_ADDED_P50_MS} ms at concurrency 1",
        f"{median['limits_c1_added_p50_ms']:.3f} ms",
        "i3_added_p50",
    )
    line(
        f"issue 4 target: (f) policies + audit within {1 - TARGET_GOVERNED_OVER_CORE:.0%} of (c) "
        f"requests/s (ratio >= {TARGET_GOVERNED_OVER_CORE})",
        f"{median['governed_over_autoglm_rps']:.2f}",
        "i4_ratio",
    )
    line(
        f"issue 5 target: (g) 3 instances + scheduler within {1 - TARGET_INSTANCES_OVER_CORE:.0%}"
        f" of (c) requests/s (ratio >= {TARGET_INSTANCES_OVER_CORE})",
        f"{median['instances_over_autoglm_rps']:.2f}",
        "i5_ratio",
    )
    for problem in problems:
        console.print(f"[yellow]{LABELS[problem.target]} not valid:[/yellow] {problem.text}")


def machine_info(generator: str) -> dict[str, Any]:
    from importlib.metadata import version

    import aiohttp
    import uvicorn

    wrk_version = None
    if generator == "wrk":
        probe = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        wrk_version = (probe.stdout + probe.stderr).splitlines()[0]
    return {
        "generator": generator,
        "wrk_version": wrk_version,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "uvloop": version("uvloop"),
        "aiohttp": aiohttp.__version__,
        "redis-py": version("redis"),
        "sqlalchemy": version("sqlalchemy"),
        "aiosqlite": version("aiosqlite"),
    }


# --- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load at --concurrency")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    parser.add_argument(
        "--c1-duration", type=int, default=5, help="seconds of load with one client"
    )
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per target")
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds; medians are shown"
    )
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="Redis for targets (d) and (e); only the bench key's own rate-limit keys are "
        "written and deleted, the database is never flushed (default: %(default)s)",
    )
    parser.add_argument("--serve", choices=("upstream", "proxy"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--load-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.duration, args.c1_duration, args.warmup, args.concurrency, args.rounds) < 1:
        parser.error("durations, --concurrency and --rounds must be at least 1")
    return args


def choose_generator(requested: str) -> str:
    if requested == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("--generator wrk: wrk is not on PATH (apt-get install wrk)")
    if requested == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    return requested


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the ``finally`` that stops the servers runs."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_benchmark(args: argparse.Namespace) -> int:
    generator = choose_generator(args.generator)
    generate = run_wrk if generator == "wrk" else run_python
    meta = machine_info(generator)
    load_before = os.getloadavg()[0]
    print(
        f"load generator: {generator}; {meta['cpu_count']} cores shared with the servers",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-") as tmp, terminate_on_sigterm():
        fleet = Fleet(Path(tmp))
        limited: LimitsServer | None = None
        try:
            specs, limited = start_fleet(fleet, args.redis_url)
            rounds = []
            for index in range(args.rounds):
                print(f"round {index + 1}/{args.rounds}", file=sys.stderr, flush=True)
                rounds.append(measure_round(specs, args, generate, fleet))
            after_problems = check_after_load(limited, fleet)
            governed = specs["governed"]
            governed_requests = sum(
                r["governed"].loaded.num_requests + r["governed"].single.num_requests
                for r in rounds
            )
            after_problems += check_audit(
                int(governed.url.split(":")[2].split("/")[0]),
                governed.headers["Authorization"].removeprefix("Bearer "),
                governed_requests,
            )
        finally:
            fleet.stop()
            if limited is not None:
                limited.cleanup()
    meta["load_before"], meta["load_after"] = load_before, os.getloadavg()[0]
    meta["redis_url"] = args.redis_url
    summaries = [summarise(round_) for round_ in rounds]
    median = {key: statistics.median(s[key] for s in summaries) for key in summaries[0]}
    problems = bad_runs(rounds) + after_problems
    print_report(median, args, meta, problems)
    if args.json:
        report = {
            "command": " ".join(sys.argv),
            "settings": {
                k: v
                for k, v in vars(args).items()
                if k in ("duration", "concurrency", "c1_duration", "warmup", "rounds")
            },
            "machine": meta,
            "median": median,
            "verdict": verdict(median, problems),
            "problems": [asdict(problem) for problem in problems],
            "rounds": [{n: asdict(r) for n, r in rd.items()} for rd in rounds],
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 2 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.upstream)
        return 0
    if args.load_worker:
        load_worker(args.load_worker)
        return 0
    try:
        return run_benchmark(args)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
