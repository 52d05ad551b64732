"""The engine loop: one thread that owns the scheduler and the runner; each step is
schedule -> execute -> update.

Other threads talk to it only through :meth:`EngineLoop.submit` and :meth:`EngineLoop.cancel`,
which queue a command and wake the loop; the scheduler and the runner are touched by the loop
thread alone, so they need no locks. New sequences join at the next step; a finished one leaves
in the step that finishes it, and a cancelled one frees its KV blocks before the next step runs.

Invariants: every submitted sequence's sink hears exactly one ending (``on_finish`` or
``on_error``), after all of its tokens; a runner failure fails the sequences it was running and
the loop goes on with the rest.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from openautoglm.core.errors import (
    BackendFailure,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from openautoglm.engine.scheduler import Batch, EngineScheduler
from openautoglm.engine.sequence import FinishReason, Sequence

log = logging.getLogger(__name__)


class StepRunner(Protocol):
    """Computes one batch: a token id per row that samples, ``None`` for the others."""

    def execute(self, batch: Batch) -> list[int | None]: ...

    def forget(self, seq_id: str) -> None: ...


class SequenceSink(Protocol):
    """Where a sequence's results go; called from the loop thread, so it must not block."""

    def on_token(self, token_id: int) -> None: ...

    def on_finish(self, reason: FinishReason) -> None: ...

    def on_error(self, error: Exception) -> None: ...


@dataclass(slots=True)
class EngineStats:
    """Counters and gauges of the loop, for metrics."""

    steps_total: int = 0
    generated_tokens_total: int = 0
    prefill_tokens_total: int = 0
    preemptions_total: int = 0
    finished_total: int = 0
    cancelled_total: int = 0
    failed_steps_total: int = 0
    running: int = 0
    waiting: int = 0
    kv_blocks_used: int = 0
    last_batch_size: int = 0


class EngineLoop:
    """Continuous batching in a thread of its own."""

    def __init__(self, scheduler: EngineScheduler, runner: StepRunner, name: str = "engine"):
        self.scheduler = scheduler
        self.runner = runner
        self.stats = EngineStats()
        self._sinks: dict[str, SequenceSink] = {}
        self._inbox: deque[Callable[[], None]] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current step; every unfinished sequence ends with an error."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def submit(self, seq: Sequence, sink: SequenceSink) -> None:
        """Queue ``seq``; a refusal (too long for the cache, a duplicate id) goes to its sink."""
        self._post(lambda: self._add(seq, sink))

    def cancel(self, seq_id: str) -> None:
        """Cancel a sequence (no-op when it has already ended); its memory is freed at once."""
        self._post(lambda: self._cancel(seq_id))

    def _post(self, command: Callable[[], None]) -> None:
        with self._wake:
            if self._stopping:
                raise ServiceUnavailableError("the engine is stopping")
            self._inbox.append(command)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._inbox and not self.scheduler.has_work and not self._stopping:
                    self._wake.wait()
            if self.run_commands():
                self._fail_all(ServiceUnavailableError("the engine stopped"))
                return
            if self.scheduler.has_work:
                self.step()

    def run_commands(self) -> bool:
        """Apply queued submits and cancels; whether a stop was asked (public for tests)."""
        with self._wake:
            commands = list(self._inbox)
            self._inbox.clear()
            stopping = self._stopping
        for command in commands:
            command()
        return stopping

    def step(self) -> None:
        """One iteration: schedule, execute, update (public for single-threaded tests)."""
        batch = self.scheduler.schedule()
        self.stats.preemptions_total += len(batch.preempted)
        if batch.is_empty:
            return
        try:
            tokens = self.runner.execute(batch)
        except (RuntimeError, ValueError, IndexError, MemoryError) as exc:
            log.exception("engine step failed; failing its %d sequences", len(batch.rows))
            self.stats.failed_steps_total += 1
            error = BackendFailure(f"generation failed: {exc}")
            for row in batch.rows:
                self._end_with_error(row.seq.seq_id, error)
            return
        finished = self.scheduler.postprocess(batch, tokens)
        self._publish(batch, tokens, finished)

    def _publish(self, batch: Batch, tokens: list[int | None], finished: list[Sequence]) -> None:
        stats = self.stats
        stats.steps_total += 1
        stats.last_batch_size = len(batch.rows)
        self._refresh_gauges()  # before any sink hears of this step, so readers see its state
        for row, token in zip(batch.rows, tokens, strict=True):
            if row.is_prefill:
                stats.prefill_tokens_total += row.num_new_tokens
            sink = self._sinks.get(row.seq.seq_id)
            if token is not None and sink is not None:
                stats.generated_tokens_total += 1
                sink.on_token(token)
        for seq in finished:
            stats.finished_total += 1
            self.runner.forget(seq.seq_id)
            sink = self._sinks.pop(seq.seq_id, None)
            if sink is not None and seq.finish_reason is not None:
                sink.on_finish(seq.finish_reason)

    def _add(self, seq: Sequence, sink: SequenceSink) -> None:
        try:
            self.scheduler.add(seq)
        except InvalidRequestError as exc:
            sink.on_error(exc)
            return
        self._sinks[seq.seq_id] = sink
        self._refresh_gauges()

    def _cancel(self, seq_id: str) -> None:
        try:
            self.scheduler.cancel(seq_id)
        except NotFoundError:
            return
        self.stats.cancelled_total += 1
        self.runner.forget(seq_id)
        sink = self._sinks.pop(seq_id, None)
        if sink is not None:
            sink.on_finish(FinishReason.CANCELLED)
        self._refresh_gauges()

    def _end_with_error(self, seq_id: str, error: Exception) -> None:
        with contextlib.suppress(NotFoundError):
            self.scheduler.cancel(seq_id)
        self.runner.forget(seq_id)
        sink = self._sinks.pop(seq_id, None)
        if sink is not None:
            sink.on_error(error)

    def _fail_all(self, error: Exception) -> None:
        for seq in list(self.scheduler):
            self._end_with_error(seq.seq_id, error)
        self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        self.stats.running = len(self.scheduler.running)
        self.stats.waiting = len(self.scheduler.waiting)
        self.stats.kv_blocks_used = self.scheduler.blocks.num_used_blocks
