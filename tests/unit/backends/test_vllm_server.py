"""The ``vllm`` backend against a stand-in ``vllm serve`` (``tests/support/fake_vllm.py``).

Real subprocesses on real sockets: the command line vLLM is given, answers whole and streamed,
priority forwarding, restart after a crash, start-up failures, and that ``close()`` leaves no
process behind. The stand-in's failure modes are set through ``env`` in front of the command, as
an operator would set ``CUDA_VISIBLE_DEVICES``. Waits poll with deadlines; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from tests.conftest import settings_for
from tests.support.servers import free_port, start_server, wait_until

from openautoglm.backends.base import collect
from openautoglm.backends.supervisor import RestartBackoff
from openautoglm.backends.vllm_server import VllmBackend, vllm_command
from openautoglm.config.settings import InstanceConfig, ModelConfig
from openautoglm.core.errors import (
    BackendFailure,
    InvalidRequestError,
    ServiceUnavailableError,
)
from openautoglm.core.types import Chunk, GenerationRequest, Message, Usage

pytestmark = pytest.mark.timeout(60)

FAKE_VLLM = Path(__file__).resolve().parents[2] / "support" / "fake_vllm.py"
SERVED_NAME = "glm-test"
MODEL_PATH = "org/tiny-model"
DEADLINE_S = 20.0


def fake_command(**env: object) -> list[str]:
    """The stand-in's launch command, with its ``FAKE_VLLM_*`` variables set through ``env``."""
    assignments = [f"FAKE_VLLM_{name.upper()}={value}" for name, value in env.items()]
    return ["env", *assignments, sys.executable, str(FAKE_VLLM), "serve"]


def vllm_config(launch_command: list[str], **overrides: Any) -> InstanceConfig:
    settings: dict[str, Any] = {
        "backend": "vllm",
        "model_path": MODEL_PATH,
        "launch_command": launch_command,
        "startup_timeout_s": DEADLINE_S,
        "restart_backoff_s": 0.3,
        "max_restart_backoff_s": 1.0,
    }
    return InstanceConfig(**{**settings, **overrides})


@contextlib.asynccontextmanager
async def running(config: InstanceConfig, **options: Any) -> AsyncIterator[VllmBackend]:
    backend = VllmBackend(config, SERVED_NAME, **options)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def chat(text: str = "hello there", *, stream: bool = False, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id="req-1",
        model=SERVED_NAME,
        kind="chat",
        messages=(Message(role="user", content=text),),
        stream=stream,
        **fields,
    )


async def chunks_of(backend: VllmBackend, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in backend.generate(request)]


async def eventually(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        await asyncio.sleep(0.01)
    return True


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: kill() is all we know
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def recorded(path: Path) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(path.read_bytes())
    return record


# --- the command line -----------------------------------------------------------------------


async def test_vllm_is_given_the_instance_settings(tmp_path: Path) -> None:
    args_file = tmp_path / "args.json"
    port = free_port()
    config = vllm_config(
        fake_command(args_file=args_file),
        port=port,
        tensor_parallel_size=2,
        pipeline_parallel_size=3,
        max_num_seqs=7,
        dtype="bfloat16",
        context_length=4096,
        extra_args=["--enable-prefix-caching", "--gpu-memory-utilization", "0.5"],
    )

    async with running(config) as backend:
        assert backend.base_url == f"http://127.0.0.1:{port}/v1"
        assert await backend.health()

    assert recorded(args_file)["argv"] == [
        "serve", MODEL_PATH,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--served-model-name", SERVED_NAME,
        "--tensor-parallel-size", "2",
        "--pipeline-parallel-size", "3",
        "--max-num-seqs", "7",
        "--dtype", "bfloat16",
        "--scheduling-policy", "priority",
        "--max-model-len", "4096",
        "--enable-prefix-caching", "--gpu-memory-utilization", "0.5",
    ]  # fmt: skip


def test_default_command_is_vllm_serve_of_upstream_model() -> None:
    config = InstanceConfig(backend="vllm", upstream_model="Qwen/Qwen2.5-7B-Instruct")

    command = vllm_command(config, SERVED_NAME, 8123)

    assert command[:3] == ("vllm", "serve", "Qwen/Qwen2.5-7B-Instruct")
    assert "--max-model-len" not in command


async def test_an_operators_scheduling_policy_replaces_ours(tmp_path: Path) -> None:
    requests_file = tmp_path / "requests.jsonl"
    config = vllm_config(
        fake_command(requests_file=requests_file), extra_args=["--scheduling-policy=fcfs"]
    )
    assert "priority" not in vllm_command(config, SERVED_NAME, 8123)

    async with running(config) as backend:
        # vLLM under fcfs refuses any priority but 0, so none is sent.
        await chunks_of(backend, chat(priority=1))

    assert "priority" not in orjson.loads(requests_file.read_bytes())


def test_a_model_to_serve_is_required() -> None:
    with pytest.raises(InvalidRequestError, match="model_path or upstream_model"):
        VllmBackend(InstanceConfig(backend="vllm"), SERVED_NAME)


async def test_capabilities_come_from_the_config() -> None:
    backend = VllmBackend(
        InstanceConfig(backend="vllm", model_path=MODEL_PATH, context_length=8192), SERVED_NAME
    )

    assert backend.capabilities.context_length == 8192
    assert not backend.capabilities.embeddings
    with pytest.raises(InvalidRequestError, match="does not support embeddings"):
        await backend.embed(["x"])
    with pytest.raises(ServiceUnavailableError, match="not started"):
        await chunks_of(backend, chat())


# --- serving --------------------------------------------------------------------------------


async def test_whole_and_streamed_answers(tmp_path: Path) -> None:
    async with running(vllm_config(fake_command())) as backend:
        whole = await collect(backend.generate(chat("hello there")))
        streamed = await chunks_of(backend, chat("hello there", stream=True))
        prompt = GenerationRequest(
            request_id="req-2", model=SERVED_NAME, kind="completion", prompt="once upon"
        )
        completed = await collect(backend.generate(prompt))

    assert whole.text == f"vllm {SERVED_NAME} heard: hello there"
    assert whole.finish_reason == "stop"
    assert whole.usage == Usage(prompt_tokens=2, completion_tokens=5)
    assert [c.text for c in streamed[:-1]] == [
        "vllm ",
        f"{SERVED_NAME} ",
        "heard: ",
        "hello ",
        "there",
    ]
    assert streamed[-1] == Chunk(finish_reason="stop", usage=Usage(2, 5))
    assert completed.text == f"vllm {SERVED_NAME} heard: once upon"


async def test_priority_is_forwarded_and_defaulted(tmp_path: Path) -> None:
    requests_file = tmp_path / "requests.jsonl"
    async with running(vllm_config(fake_command(requests_file=requests_file))) as backend:
        await chunks_of(backend, chat(priority=1))
        await chunks_of(backend, chat(priority=0, stream=True))
        await chunks_of(backend, chat())

    bodies = [orjson.loads(line) for line in requests_file.read_bytes().splitlines()]
    assert [body["priority"] for body in bodies] == [1, 0, 5]
    assert {body["model"] for body in bodies} == {SERVED_NAME}


async def test_output_goes_to_the_log_file_and_a_slow_start_is_waited_for(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "logs" / "vllm.log"
    config = vllm_config(fake_command(startup_delay_s=1.0), log_file=str(log_file))

    async with running(config) as backend:
        assert await backend.health()

    log = log_file.read_text()
    assert "starting env FAKE_VLLM_STARTUP_DELAY_S=1.0" in log
    assert "fake vllm: serving on" in log


# --- supervision ----------------------------------------------------------------------------


async def test_a_crashed_process_is_restarted_and_serves_again(tmp_path: Path) -> None:
    config = vllm_config(fake_command(exit_after=1), restart_backoff_s=0.5)
    async with running(config) as backend:
        first_pid = backend.pid
        assert (await collect(backend.generate(chat()))).text.endswith("hello there")

        assert await eventually(lambda: backend.metrics()["up"] == 0.0)
        # Down: refused at once (no connection attempt), so failover can take over.
        with pytest.raises(ServiceUnavailableError, match="is down") as refused:
            await chunks_of(backend, chat())
        assert refused.value.code == "backend_down"
        assert not await backend.health()

        assert await eventually(lambda: backend.metrics()["up"] == 1.0)
        assert await backend.health()
        assert backend.metrics()["restarts_total"] == 1.0
        assert backend.pid not in (None, first_pid)
        assert (await collect(backend.generate(chat("again")))).text.endswith("again")


def test_restart_delays_double_up_to_the_cap_and_reset_after_a_healthy_run() -> None:
    backoff = RestartBackoff(initial_s=1.0, max_s=5.0, healthy_after_s=60.0)

    delays = [backoff.delay_after(up_for_s) for up_for_s in (3.0, None, None, 10.0, None)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.delay_after(61.0) == 1.0
    assert backoff.delay_after(None) == 2.0


async def test_close_leaves_no_process_of_the_group_alive(tmp_path: Path) -> None:
    args_file = tmp_path / "args.json"
    command = fake_command(args_file=args_file, spawn_worker=1, ignore_sigterm=1)
    async with running(vllm_config(command), stop_grace_s=0.5) as backend:
        pids = recorded(args_file)
        assert backend.pid == pids["pid"]
        assert is_alive(pids["pid"]) and is_alive(pids["worker_pid"])

    # Both ignore SIGTERM: the grace period ran out and the group was killed.
    assert not is_alive(pids["pid"])
    assert await eventually(lambda: not is_alive(pids["worker_pid"]), timeout_s=5)
    assert backend.pid is None and backend.metrics()["up"] == 0.0
    with pytest.raises(ServiceUnavailableError, match="is stopped"):
        await chunks_of(backend, chat())


# --- start-up failures ----------------------------------------------------------------------


async def test_not_healthy_in_time_is_a_failure_naming_command_and_output(
    tmp_path: Path,
) -> None:
    args_file = tmp_path / "args.json"
    config = vllm_config(fake_command(args_file=args_file, never_healthy=1), startup_timeout_s=3.0)
    backend = VllmBackend(config, SERVED_NAME)

    with pytest.raises(BackendFailure, match="not ready within 3 s") as failed:
        await backend.start()

    assert failed.value.code == "backend_start_failed"
    assert str(FAKE_VLLM) in failed.value.message
    assert "fake vllm: loading" in failed.value.message
    assert not is_alive(recorded(args_file)["pid"])
    await backend.close()


async def test_exit_during_start_is_a_failure_with_its_last_words() -> None:
    config = vllm_config(fake_command(), extra_args=["--max-num-seqs", "many"])

    with pytest.raises(BackendFailure, match="exited with code 2") as failed:
        await VllmBackend(config, SERVED_NAME).start()

    assert "invalid int value: 'many'" in failed.value.message
    assert "--max-num-seqs many" in failed.value.message


async def test_missing_executable_is_a_clear_failure() -> None:
    config = vllm_config(["/nonexistent/bin/vllm", "serve"])

    with pytest.raises(BackendFailure, match=r"cannot start .*/nonexistent/bin/vllm"):
        await VllmBackend(config, SERVED_NAME).start()


# --- through the gateway --------------------------------------------------------------------


def test_openai_client_through_the_gateway(tmp_path: Path) -> None:
    args_file = tmp_path / "args.json"
    model = ModelConfig(
        name=SERVED_NAME,
        backend="vllm",
        model_path=MODEL_PATH,
        launch_command=fake_command(args_file=args_file),
        startup_timeout_s=DEADLINE_S,
    )
    server = start_server(settings_for(tmp_path, [model]))
    try:
        with openai.OpenAI(
            api_key=server.admin_key, base_url=server.base_url + "/v1", max_retries=0
        ) as client:
            whole = client.chat.completions.create(
                model=SERVED_NAME, messages=[{"role": "user", "content": "ping pong"}]
            )
            stream = client.chat.completions.create(
                model=SERVED_NAME,
                messages=[{"role": "user", "content": "ping pong"}],
                stream=True,
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        server.stop()

    assert whole.choices[0].message.content == f"vllm {SERVED_NAME} heard: ping pong"
    assert streamed == f"vllm {SERVED_NAME} heard: ping pong"
    assert wait_until(lambda: not is_alive(recorded(args_file)["pid"]), timeout_s=5)
