"""Supervision of one server process a backend launches: start, readiness, restarts, stop.

A :class:`Supervisor` runs a command in its own process group, sends the process's output to a
log file (appended) or, line by line, to this module's logger (keeping the last lines for error
messages), and waits until the backend's readiness check passes. From then on a watch task
restarts the process whenever it exits unexpectedly, after :class:`RestartBackoff`'s delay.

Invariants: the state moves only along ``PROCESS_TRANSITIONS``; ``is_up`` is true only between a
passed readiness check and the next exit; what is left of an exited process group is killed
before a restart; when ``start()`` fails or ``stop()`` returns, no process of the group is left
(SIGTERM, a grace period, then SIGKILL to the whole group).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO

from openautoglm.core.errors import BackendFailure, ConflictError

logger = logging.getLogger(__name__)

KEPT_OUTPUT_LINES = 50
_TAIL_BYTES = 16_384  # read back from a log file for an error message
_LINE_LIMIT_BYTES = 1 << 20
_DRAIN_TIMEOUT_S = 2.0  # for the output pipe to reach EOF once the process is gone

Process = asyncio.subprocess.Process
ReadinessCheck = Callable[[], Awaitable[bool]]


class ProcessState(Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    UP = "up"
    DOWN = "down"  # exited unexpectedly; a restart is pending
    STOPPING = "stopping"


PROCESS_TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    ProcessState.STOPPED: frozenset({ProcessState.STARTING}),
    ProcessState.STARTING: frozenset({ProcessState.UP, ProcessState.DOWN, ProcessState.STOPPING}),
    ProcessState.UP: frozenset({ProcessState.DOWN, ProcessState.STOPPING}),
    ProcessState.DOWN: frozenset({ProcessState.STARTING, ProcessState.STOPPING}),
    ProcessState.STOPPING: frozenset({ProcessState.STOPPED}),
}


class IllegalProcessTransitionError(ConflictError):
    """A supervised process was asked to move to a state its current state does not lead to."""

    code = "illegal_process_transition"


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What to run, what to call it in logs and errors, and how long to give it."""

    command: tuple[str, ...]
    label: str
    startup_timeout_s: float
    log_file: Path | None = None
    stop_grace_s: float = 10.0
    ready_poll_s: float = 0.1

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


@dataclass(slots=True)
class RestartBackoff:
    """Waits before restarts: ``initial_s``, doubling up to ``max_s``; back to ``initial_s``
    once the process had stayed up for ``healthy_after_s``."""

    initial_s: float
    max_s: float
    healthy_after_s: float = 60.0
    _next_s: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._next_s = self.initial_s

    def delay_after(self, up_for_s: float | None) -> float:
        """The wait before the next restart; ``up_for_s`` is None when the last try never came
        up."""
        if up_for_s is not None and up_for_s >= self.healthy_after_s:
            self._next_s = self.initial_s
        delay_s = min(self._next_s, self.max_s)
        self._next_s = min(delay_s * 2, self.max_s)
        return delay_s


class Supervisor:
    """Keeps one :class:`LaunchSpec` running from ``start()`` until ``stop()``."""

    def __init__(
        self,
        spec: LaunchSpec,
        is_ready: ReadinessCheck,
        backoff: RestartBackoff,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spec = spec
        self._is_ready = is_ready
        self._backoff = backoff
        self._clock = clock
        self._state = ProcessState.STOPPED
        self._process: Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._output: deque[str] = deque(maxlen=KEPT_OUTPUT_LINES)
        self._log_offset = 0
        self._up_since: float | None = None
        self.restarts_total = 0

    @property
    def state(self) -> ProcessState:
        return self._state

    @property
    def is_up(self) -> bool:
        """Ready and not seen to exit since."""
        process = self._process
        return self._state is ProcessState.UP and process is not None and process.returncode is None

    @property
    def pid(self) -> int | None:
        """The running process's id (its process group's too), or None."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> None:
        """Launch the process and wait until it is ready, then keep it running. Raises
        ``BackendFailure`` (nothing left running) when it exits first or is not ready in time."""
        self._transition(ProcessState.STARTING)
        try:
            await self._launch()
        except BaseException:
            if self._state is ProcessState.STARTING:  # not already stopped by stop()
                self._transition(ProcessState.STOPPING)
                self._transition(ProcessState.STOPPED)
            raise
        self._transition(ProcessState.UP)
        self._watcher = asyncio.create_task(self._watch(), name=f"supervise {self._spec.label}")
        self._watcher.add_done_callback(self._watch_ended)

    async def stop(self) -> None:
        """Stop restarting and end the whole process group; afterwards none of it runs."""
        if self._state in (ProcessState.STOPPED, ProcessState.STOPPING):
            return
        self._transition(ProcessState.STOPPING)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait({watcher})
        if self._process is not None:
            await self._terminate(self._process)
        self._up_since = None
        self._transition(ProcessState.STOPPED)

    def _transition(self, to: ProcessState) -> None:
        if to not in PROCESS_TRANSITIONS[self._state]:
            raise IllegalProcessTransitionError(
                f"{self._spec.label} cannot go from {self._state.value} to {to.value}"
            )
        self._state = to

    # --- one process ----------------------------------------------------------------------

    async def _launch(self) -> None:
        """Spawn the process and wait until it is ready; on failure none of it is left."""
        process = await self._spawn()
        try:
            problem = await self._wait_ready(process)
        except BaseException:
            await self._terminate(process)
            raise
        if problem is not None:
            await self._terminate(process)  # first, so the output is complete
            raise await self._failure(problem)
        self._up_since = self._clock()
        logger.info("%s: ready (pid %d)", self._spec.label, process.pid)

    async def _spawn(self) -> Process:
        spec = self._spec
        log: IO[bytes] | None = None
        try:
            if spec.log_file is not None:
                log, self._log_offset = await asyncio.to_thread(_open_log, spec)
            process = await asyncio.create_subprocess_exec(
                *spec.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log if log is not None else asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group, so signals reach the workers it starts as well.
                start_new_session=True,
                limit=_LINE_LIMIT_BYTES,
            )
        except OSError as exc:
            raise BackendFailure(
                f"cannot start {spec.label}: {exc}; command: {spec.command_line}",
                code="backend_start_failed",
            ) from exc
        finally:
            if log is not None:
                log.close()  # the child has its own descriptor
        self._process = process
        self._output.clear()
        if process.stdout is not None:
            self._reader = asyncio.create_task(self._pump(process.stdout))
        logger.info("%s: started pid %d: %s", spec.label, process.pid, spec.command_line)
        return process

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        """Log the output line by line, keeping the last lines for error messages."""
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit; asyncio has dropped it
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            self._output.append(line)
            logger.info("%s: %s", self._spec.label, line)

    async def _wait_ready(self, process: Process) -> str | None:
        """None once ready; otherwise why it never will be."""
        spec = self._spec
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.startup_timeout_s
        while True:
            if process.returncode is not None:
                return f"exited with code {process.returncode} before it was ready"
            if await self._is_ready():
                return None
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                return f"was not ready within {spec.startup_timeout_s:g} s"
            with contextlib.suppress(TimeoutError):  # woken early by an exit
                await asyncio.wait_for(process.wait(), min(spec.ready_poll_s, remaining_s))

    async def _failure(self, what: str) -> BackendFailure:
        spec = self._spec
        if spec.log_file is not None:
            lines = await asyncio.to_thread(_tail, spec.log_file, self._log_offset)
        else:
            lines = list(self._output)
        where = f" ({spec.log_file})" if spec.log_file is not None else ""
        shown = "\n".join(lines) if lines else "(none)"
        return BackendFailure(
            f"{spec.label} {what}; command: {spec.command_line}; last output{where}:\n{shown}",
            code="backend_start_failed",
        )

    async def _terminate(self, process: Process) -> None:
        """SIGTERM to the group; SIGKILL to whatever is left after the grace period."""
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), self._spec.stop_grace_s)
        # Workers that outlive their leader would be orphans holding memory (and GPUs).
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()
        await self._stop_reader()

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        _, pending = await asyncio.wait({reader}, timeout=_DRAIN_TIMEOUT_S)
        if pending:  # something outside the group still holds the pipe open
            reader.cancel()
            await asyncio.wait({reader})

    # --- supervision ----------------------------------------------------------------------

    async def _watch(self) -> None:
        """Restart the process whenever it exits, until ``stop()`` cancels this task."""
        label = self._spec.label
        while True:
            assert self._process is not None, "start() launched one"
            returncode = await self._process.wait()
            _signal_group(self._process.pid, signal.SIGKILL)  # leftovers of the dead one
            await self._stop_reader()  # its last words, before they are logged
            up_for_s = self._mark_down(returncode)
            delay_s = self._backoff.delay_after(up_for_s)
            logger.warning("%s: restarting in %.3g s", label, delay_s)
            await asyncio.sleep(delay_s)
            self._transition(ProcessState.STARTING)
            self.restarts_total += 1
            try:
                await self._launch()
            except BackendFailure as exc:
                logger.error("%s: restart %d failed: %s", label, self.restarts_total, exc)
                self._transition(ProcessState.DOWN)
            else:
                self._transition(ProcessState.UP)

    def _mark_down(self, returncode: int) -> float | None:
        """Note an exit; how long the process had been up (None: it never was)."""
        if self._state is not ProcessState.UP:
            return None  # a failed restart, already reported
        self._transition(ProcessState.DOWN)
        now = self._clock()
        up_for_s = now - (self._up_since if self._up_since is not None else now)
        self._up_since = None
        logger.error(
            "%s: exited unexpectedly with code %d after %.1f s up; last output:\n%s",
            self._spec.label,
            returncode,
            up_for_s,
            "\n".join(self._output) or "(see its log file)",
        )
        return up_for_s

    def _watch_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "%s: supervision stopped by an error; the process is no longer restarted",
                self._spec.label,
                exc_info=task.exception(),
            )


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, signum)


def _open_log(spec: LaunchSpec) -> tuple[IO[bytes], int]:
    """The log file, opened for appending, and where this launch's output starts."""
    assert spec.log_file is not None
    spec.log_file.parent.mkdir(parents=True, exist_ok=True)
    log = spec.log_file.open("ab")
    log.write(f"--- {spec.label}: starting {spec.command_line}\n".encode())
    log.flush()
    return log, log.tell()


def _tail(path: Path, offset: int) -> list[str]:
    """The last lines of ``path`` written after ``offset``."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - _TAIL_BYTES))
            text = log.read().decode("utf-8", "replace")
    except OSError as exc:
        return [f"(cannot read the log file: {exc})"]
    return text.splitlines()[-KEPT_OUTPUT_LINES:]
