"""The ``vllm`` backend: a supervised ``vllm serve`` process, reached through its OpenAI API.

``start()`` launches ``launch_command`` (default ``vllm serve``) for ``model_path`` (or
``upstream_model``) on 127.0.0.1, with the instance's parallelism, batch size, dtype and context
length and vLLM's priority scheduling, and waits for ``GET /health``. Requests then go through an
:class:`OpenAIUpstreamBackend` at ``http://127.0.0.1:{port}/v1`` that forwards each request's
priority; a request without one is sent at :data:`DEFAULT_PRIORITY`, so that it does not
overtake requests that asked for a lower class. A ``--scheduling-policy`` of the operator's own
in ``extra_args`` replaces ours, and unless it is ``priority`` no priority is sent. The process
is kept running by a :class:`Supervisor` (restarts with backoff; see ``supervisor.py``).

Invariant: requests are sent only while the process is up; while it is down (crashed, restarting,
stopped) they fail at once with 503, so the gateway's breaker and failover take over.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp

from openautoglm.backends.base import embeddings_unsupported
from openautoglm.backends.openai_upstream import OpenAIUpstreamBackend
from openautoglm.backends.supervisor import LaunchSpec, RestartBackoff, Supervisor
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import InvalidRequestError, ServiceUnavailableError
from openautoglm.core.types import Capabilities, Chunk, Embeddings, GenerationRequest

HOST = "127.0.0.1"
DEFAULT_LAUNCH_COMMAND = ("vllm", "serve")
DEFAULT_PRIORITY = 5  # the scheduler's default class (SchedulerConfig.default_priority)
_HEALTH_TIMEOUT_S = 2.0


def vllm_command(config: InstanceConfig, model_name: str, port: int) -> tuple[str, ...]:
    """The command line that serves ``config``'s model as ``model_name`` on ``port``."""
    model = config.model_path or config.upstream_model
    assert model, "checked by VllmBackend"
    command = [
        *(config.launch_command or DEFAULT_LAUNCH_COMMAND),
        model,
        "--host", HOST,
        "--port", str(port),
        "--served-model-name", model_name,
        "--tensor-parallel-size", str(config.tensor_parallel_size),
        "--pipeline-parallel-size", str(config.pipeline_parallel_size),
        "--max-num-seqs", str(config.max_num_seqs),
        "--dtype", config.dtype,
    ]  # fmt: skip
    if scheduling_policy(config.extra_args) is None:
        command += ["--scheduling-policy", "priority"]
    if config.context_length is not None:
        command += ["--max-model-len", str(config.context_length)]
    return (*command, *config.extra_args)


def scheduling_policy(extra_args: Sequence[str]) -> str | None:
    """The ``--scheduling-policy`` that ``extra_args`` set, if any (the last one wins)."""
    policy = None
    for index, arg in enumerate(extra_args):
        if arg == "--scheduling-policy" and index + 1 < len(extra_args):
            policy = extra_args[index + 1]
        elif arg.startswith("--scheduling-policy="):
            policy = arg.partition("=")[2]
    return policy


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class VllmBackend:
    """One ``vllm serve`` process, started, watched and restarted by this backend."""

    def __init__(
        self, config: InstanceConfig, model_name: str, *, stop_grace_s: float = 10.0
    ) -> None:
        if not (config.model_path or config.upstream_model):
            raise InvalidRequestError(
                f"model '{model_name}': backend 'vllm' needs model_path or upstream_model"
            )
        self._config = config
        self._model_name = model_name
        self._label = f"vllm[{model_name}/{config.name or 'default'}]"
        self._stop_grace_s = stop_grace_s
        self._port: int | None = None
        self._supervisor: Supervisor | None = None
        self._upstream: OpenAIUpstreamBackend | None = None
        self._session: aiohttp.ClientSession | None = None
        self._capabilities = Capabilities(
            embeddings=config.embeddings,
            vision=bool(config.vision),
            context_length=config.context_length,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def base_url(self) -> str | None:
        """The OpenAI API of the process (``…/v1``), once a port is chosen."""
        return None if self._port is None else f"http://{HOST}:{self._port}/v1"

    @property
    def pid(self) -> int | None:
        """The running process's id (and its process group's), or None."""
        return None if self._supervisor is None else self._supervisor.pid

    async def start(self) -> None:
        """Launch vLLM and wait until it answers ``/health``; ``BackendFailure`` otherwise."""
        config = self._config
        self._port = port = config.port or free_port()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_HEALTH_TIMEOUT_S)
        )
        upstream_config = config.model_copy(
            update={"base_url": self.base_url, "upstream_model": self._model_name}
        )
        # vLLM refuses a non-zero priority unless it schedules by priority.
        forward_priority = scheduling_policy(config.extra_args) in (None, "priority")
        self._upstream = OpenAIUpstreamBackend(
            upstream_config, self._model_name, forward_priority=forward_priority
        )
        await self._upstream.start()
        spec = LaunchSpec(
            command=vllm_command(config, self._model_name, port),
            label=self._label,
            startup_timeout_s=config.startup_timeout_s,
            log_file=Path(config.log_file) if config.log_file else None,
            stop_grace_s=self._stop_grace_s,
        )
        backoff = RestartBackoff(config.restart_backoff_s, config.max_restart_backoff_s)
        self._supervisor = Supervisor(spec, self._answers_health, backoff)
        try:
            await self._supervisor.start()
        except BaseException:
            await self._close_clients()
            raise

    async def close(self) -> None:
        """Stop the process group (SIGTERM, grace period, SIGKILL) and the HTTP clients."""
        if self._supervisor is not None:
            await self._supervisor.stop()
        await self._close_clients()

    async def health(self) -> bool:
        """Up, and vLLM's own ``/health`` answers 200 (its engine is alive)."""
        return (
            self._supervisor is not None and self._supervisor.is_up and await self._answers_health()
        )

    def metrics(self) -> dict[str, float]:
        supervisor = self._supervisor
        gauges = dict(self._upstream.metrics()) if self._upstream is not None else {}
        gauges["up"] = 1.0 if supervisor is not None and supervisor.is_up else 0.0
        gauges["restarts_total"] = float(supervisor.restarts_total if supervisor else 0)
        return gauges

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        upstream = self._serving()
        if request.priority is None:
            request = dataclasses.replace(request, priority=DEFAULT_PRIORITY)
        chunks = upstream.generate(request)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            # Closed at once, not when collected: that closes the connection to vLLM, which
            # then stops generating.
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    async def embed(self, inputs: Sequence[str]) -> Embeddings:
        if not self._config.embeddings:
            raise embeddings_unsupported(self._model_name)
        return await self._serving().embed(inputs)

    def _serving(self) -> OpenAIUpstreamBackend:
        """The upstream client, only while the process is up (503 otherwise)."""
        supervisor = self._supervisor
        if supervisor is None or self._upstream is None or not supervisor.is_up:
            state = "not started" if supervisor is None else supervisor.state.value
            raise ServiceUnavailableError(f"{self._label} is {state}", code="backend_down")
        return self._upstream

    async def _answers_health(self) -> bool:
        if self._session is None or self._port is None:
            return False
        try:
            async with self._session.get(f"http://{HOST}:{self._port}/health") as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def _close_clients(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
