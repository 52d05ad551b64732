"""A stand-in for ``vllm serve`` in tests: vLLM's command line and OpenAI's protocol, no model.

Run as ``python tests/support/fake_vllm.py [serve] MODEL --port N ...`` (a ``vllm`` instance's
``launch_command`` is ``[sys.executable, this file, "serve"]``). It parses the vLLM flags the
gateway sends (and accepts unknown ones), then serves on ``--host``/``--port`` with aiohttp:
``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` and ``/v1/completions``,
whole or streamed (OpenAI's SSE chunks, then ``data: [DONE]``; the shapes come from
``fake_upstream``). The answer is ``"vllm <served name> heard: <last user text or prompt>"``,
streamed one word per chunk. Like vLLM, it refuses a non-zero ``priority`` unless started with
``--scheduling-policy priority``.

Environment variables, for tests:

- ``FAKE_VLLM_ARGS_FILE``: at start, write ``{"argv": [...], "pid": N, "worker_pid": N|null}``.
- ``FAKE_VLLM_REQUESTS_FILE``: append each generation request's JSON body as one line.
- ``FAKE_VLLM_EXIT_AFTER=N``: exit with code 3 once the N-th generation answer is sent.
- ``FAKE_VLLM_STARTUP_DELAY_S``: wait this long before listening.
- ``FAKE_VLLM_NEVER_HEALTHY=1``: ``/health`` answers 503 for ever.
- ``FAKE_VLLM_SPAWN_WORKER=1``: start a child that ignores SIGTERM, like a stuck vLLM worker.
- ``FAKE_VLLM_IGNORE_SIGTERM=1``: ignore SIGTERM itself (only SIGKILL ends it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: find `tests`

import orjson
from aiohttp import web

from tests.support.fake_upstream import Answer, _events, _whole_answer

EXIT_CODE = 3
_WORKER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """vLLM's flags that the gateway sends; anything else is accepted and ignored."""
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="fake-vllm serve")
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "half", "float16", "bfloat16", "float32"]
    )
    parser.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "priority"])
    parser.add_argument("--max-model-len", type=int)
    args, _unknown = parser.parse_known_args(argv)
    return args


class FakeVllm:
    """The HTTP side: one model, deterministic answers, the failure modes above."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.served_name: str = (args.served_model_name or [args.model])[0]
        self.priority_scheduling = args.scheduling_policy == "priority"
        self.exit_after = int(os.environ.get("FAKE_VLLM_EXIT_AFTER", "0"))
        self.never_healthy = os.environ.get("FAKE_VLLM_NEVER_HEALTHY") == "1"
        self.requests_file = os.environ.get("FAKE_VLLM_REQUESTS_FILE")
        self.answered = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=503 if self.never_healthy else 200)

    async def models(self, _request: web.Request) -> web.Response:
        card = {"id": self.served_name, "object": "model", "created": 0, "owned_by": "vllm"}
        return _json({"object": "list", "data": [card]})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if self.requests_file:
            _append_line(self.requests_file, orjson.dumps(body))
        if body.get("model") != self.served_name:
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        if body.get("priority", 0) != 0 and not self.priority_scheduling:
            return _error(400, "priority scheduling is not enabled")
        kind = "chat" if request.path.endswith("/chat/completions") else "completion"
        response = await self._answer(request, body, kind)
        self.answered += 1
        if self.exit_after and self.answered >= self.exit_after:
            # A crash right after the answer left: the client has it, the next call finds no one.
            asyncio.get_running_loop().call_later(0.05, os._exit, EXIT_CODE)
        return response

    async def _answer(self, request: web.Request, body: Any, kind: str) -> web.StreamResponse:
        heard = _heard(body, kind)
        text = f"vllm {self.served_name} heard: {heard}"
        chunks = tuple(re.findall(r"\S+\s*", text))
        answer = Answer(
            chunks=chunks, prompt_tokens=len(heard.split()), completion_tokens=len(chunks)
        )
        streamed = bool(body.get("stream"))
        response = web.StreamResponse(headers=_SSE_HEADERS if streamed else None)
        if self.exit_after and self.answered + 1 >= self.exit_after:
            response.force_close()  # no keep-alive connection to a process about to die
        if not streamed:
            payload = {**_whole_answer(answer, kind), "model": self.served_name}
            response.content_type = "application/json"
            await response.prepare(request)
            await response.write(orjson.dumps(payload))
        else:
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            await response.prepare(request)
            for event in _events(answer, kind, usage):
                await response.write(event.payload)
        await response.write_eof()
        return response


def _heard(body: Any, kind: str) -> str:
    if kind == "completion":
        return str(body.get("prompt") or "")
    users = [m for m in body.get("messages") or () if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if part.get("type") == "text")
    return str(content or "")


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    error = {"message": message, "type": "BadRequestError", "param": None, "code": status}
    return _json({"error": error, "object": "error"}, status=status)


def _append_line(path: str, line: bytes) -> None:
    with open(path, "ab") as out:
        out.write(line + b"\n")


def _start_worker() -> int | None:
    if os.environ.get("FAKE_VLLM_SPAWN_WORKER") != "1":
        return None
    return subprocess.Popen([sys.executable, "-c", _WORKER]).pid


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    ignore_sigterm = os.environ.get("FAKE_VLLM_IGNORE_SIGTERM") == "1"
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker_pid = _start_worker()
    if args_file := os.environ.get("FAKE_VLLM_ARGS_FILE"):
        record = {"argv": argv, "pid": os.getpid(), "worker_pid": worker_pid}
        Path(args_file).write_bytes(orjson.dumps(record))
    fake = FakeVllm(args)
    print(f"INFO fake vllm: loading {args.model} as {fake.served_name}", flush=True)
    time.sleep(float(os.environ.get("FAKE_VLLM_STARTUP_DELAY_S", "0")))
    print(f"INFO fake vllm: serving on http://{args.host}:{args.port}", flush=True)
    web.run_app(
        fake.app(),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        handle_signals=not ignore_sigterm,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
