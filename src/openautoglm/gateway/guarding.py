"""Policy stages of the request path: input checks, output filtering, and the deadline.

Output is filtered before any of it leaves the gateway: each backend chunk goes through the
policy's :class:`~openautoglm.policy.scanner.GuardStream`, which releases only text that can no
longer become part of a match. A masked word arrives masked; a blocked answer ends at the start
of the offending text with ``finish_reason: "content_filter"``. Streamed and whole answers are
the same text, whatever the chunking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator

from openautoglm.core.errors import DeadlineExceededError
from openautoglm.core.types import Chunk
from openautoglm.gateway.trace import CallTrace
from openautoglm.policy.engine import EffectivePolicy, decisions_of
from openautoglm.policy.scanner import GuardStream, Span


class BudgetExceeded(DeadlineExceededError):
    """The request's own deadline passed (not the instance's fault: never retried)."""


class OutputFilter:
    """Passes backend chunks through the output guard of one call."""

    def __init__(self, policy: EffectivePolicy | None, model: str, trace: CallTrace) -> None:
        self._guard = policy.guard("output", model) if policy is not None else None
        self._stream: GuardStream | None = None
        self._trace = trace
        self._noted = 0
        self.blocked_rule: str | None = None

    @property
    def active(self) -> bool:
        return self._guard is not None

    def filter(self, chunk: Chunk) -> Chunk | None:
        """The chunk as the client may see it; None when there is nothing to send yet."""
        guard = self._guard
        if guard is None:
            return chunk
        begun = time.perf_counter()
        if self._stream is None and chunk.finish_reason is not None:
            # A whole answer in one chunk: one scan (the stream would give the same result).
            result = guard.apply(chunk.text)
            text, spans, blocked = result.text, result.spans, result.blocked
            self._stream = guard.stream()  # nothing more is scanned after a final chunk
        else:
            stream = self._stream = self._stream or guard.stream()
            text = stream.feed(chunk.text) if chunk.text else ""
            if stream.blocked is None and chunk.finish_reason is not None:
                text += stream.finish()
            spans, blocked = stream.spans, stream.blocked
        self._note(spans)
        self._trace.add_stage("policy_output", begun)
        if blocked is not None:
            self.blocked_rule = blocked.rule_id
            return Chunk(text=text, finish_reason="content_filter", usage=chunk.usage)
        if not text and chunk.finish_reason is None and chunk.usage is None:
            return None
        return chunk if text == chunk.text else dataclasses.replace(chunk, text=text)

    def tail(self) -> Chunk | None:
        """What is still held back when a backend ended without a final chunk."""
        stream = self._stream
        if stream is None or stream.blocked is not None:
            return None
        text = stream.finish()
        self._note(stream.spans)
        if stream.blocked is not None:
            self.blocked_rule = stream.blocked.rule_id
            return Chunk(text=text, finish_reason="content_filter")
        return Chunk(text=text) if text else None

    def _note(self, spans: list[Span]) -> None:
        if len(spans) > self._noted:
            for decision in decisions_of(spans[self._noted :], "output"):
                if decision not in self._trace.decisions:
                    self._trace.decisions.append(decision)
            self._noted = len(spans)


async def within_deadline(
    chunks: AsyncIterator[Chunk], deadline: float | None, budget_ms: int | None
) -> AsyncGenerator[Chunk, None]:
    """``chunks`` until ``deadline`` (event-loop time); past it the call is cancelled (504)."""
    if deadline is None:
        async for chunk in chunks:
            yield chunk
        return
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise BudgetExceeded(
                    f"the request ran past its deadline ({budget_ms} ms)"
                ) from None
            yield chunk
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
