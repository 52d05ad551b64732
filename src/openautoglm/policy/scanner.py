"""One guard for whole texts and for streams: find spans, mask them, stop at a block.

A ``Detector`` reports ``Span``s (keyword hits, personal data, ...); a ``Guard`` combines
detectors. ``Guard.apply`` handles a whole text; ``Guard.stream`` handles an answer arriving in
chunks and releases only what can no longer change.

How spans act on the text, in one deterministic order (start, then longer first, then detector
order, then the detector's own order):

* ``flag`` spans are reported and change nothing;
* ``mask`` spans are replaced by their replacement; a span that starts inside an earlier mask
  has only its part past that mask replaced, one ``*`` per character;
* the first ``block`` span stops everything: the result is the (masked) text before it (all
  of a mask that started before it), and only the spans up to and including it are reported.

THE INVARIANT: for any text and any chunking, the concatenation of every ``feed`` result and
``finish()`` equals ``apply(text).text``, with equal spans and blocked span; a blocked or masked
word is never released, not even in part. It holds because the stream commits a span only
once every detector says no later text can change a span starting before it
(``scan_stream``'s stable point), commits spans in the same order as ``apply``, and scans each
detector from where it needs context (``context_start``), not from the start of the answer.
A detector without those hints is held back by its ``lookbehind``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal, Protocol, runtime_checkable

from openautoglm.policy.pii import PiiHit, Recognizer
from openautoglm.policy.words import WordHit, WordMatcher

Action = Literal["block", "mask", "flag"]
ACTIONS: tuple[Action, ...] = ("block", "mask", "flag")


@dataclass(frozen=True, slots=True)
class Span:
    """A part of a text a rule applies to: ``text[start:end]``."""

    start: int
    end: int
    rule_id: str
    action: Action
    replacement: str | None = None
    category: str | None = None


class Detector(Protocol):
    """Finds spans in a text.

    ``lookbehind`` is the most characters of context a span can need: a span starting at
    ``i`` must be decided by ``text[i - lookbehind : i + lookbehind]``. Detectors that can say
    more precisely how much of a growing text is decided implement ``StreamDetector``.
    """

    @property
    def lookbehind(self) -> int: ...

    def find(self, text: str) -> list[Span]: ...


@runtime_checkable
class StreamDetector(Detector, Protocol):
    """A detector that knows how much of a growing text is decided."""

    def scan_stream(self, text: str, start: int) -> tuple[int, list[Span]]:
        """For a text that may still grow: ``(stable, spans)``.

        Every span of ``text`` starting before ``stable`` is final, whatever text follows;
        ``spans`` are those starting in ``[start, stable)``.
        """
        ...

    def context_start(self, text: str, pos: int) -> int:
        """Where a text must start so that spans starting at or after ``pos`` are found alike."""
        ...


def _check_action(action: str) -> Action:
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    return action


class WordDetector:
    """Keyword hits of the chosen categories (all when ``categories`` is None)."""

    def __init__(
        self,
        rule_id: str,
        matcher: WordMatcher,
        action: Action,
        categories: set[str] | frozenset[str] | None = None,
    ) -> None:
        self.rule_id = rule_id
        self.matcher = matcher
        self.action = _check_action(action)
        self.categories = frozenset(categories) if categories is not None else None

    @property
    def lookbehind(self) -> int:
        return self.matcher.longest + 1

    def find(self, text: str) -> list[Span]:
        return self._spans(self.matcher.find(text))

    def _spans(self, hits: list[WordHit]) -> list[Span]:
        categories, masking = self.categories, self.action == "mask"
        return [
            Span(
                hit.start,
                hit.end,
                self.rule_id,
                self.action,
                "*" * (hit.end - hit.start) if masking else None,
                hit.entry.category,
            )
            for hit in hits
            if categories is None or hit.entry.category in categories
        ]

    def scan_stream(self, text: str, start: int) -> tuple[int, list[Span]]:
        stable, hits = self.matcher.scan_stream(text, start)
        return stable, self._spans(hits)

    def context_start(self, text: str, pos: int) -> int:
        return self.matcher.context_start(text, pos)


class PiiDetector:
    """Hits of one PII recogniser; a mask replaces the value by ``recognizer.mask(value)``."""

    def __init__(self, rule_id: str, recognizer: Recognizer, action: Action) -> None:
        self.rule_id = rule_id
        self.recognizer = recognizer
        self.action = _check_action(action)
        self._required: re.Pattern[str] | None = getattr(recognizer, "required", None)

    @property
    def lookbehind(self) -> int:
        return self.recognizer.reach

    def find(self, text: str) -> list[Span]:
        if self._required is not None and self._required.search(text) is None:
            return []
        return self._spans(self.recognizer.find(text))

    def scan_stream(self, text: str, start: int) -> tuple[int, list[Span]]:
        # Hits starting before the last run of `hold_chars` cannot change, and neither can
        # those starting more than `reach` characters before the end.
        recognizer = self.recognizer
        stable = len(text) - recognizer.reach
        if recognizer.hold_chars:
            stable = max(stable, len(text.rstrip(recognizer.hold_chars)))
        if stable <= start or (self._required is not None and self._required.search(text) is None):
            return stable, []
        return stable, self._spans([h for h in recognizer.find(text) if start <= h.start < stable])

    def _spans(self, hits: list[PiiHit]) -> list[Span]:
        recognizer, masking = self.recognizer, self.action == "mask"
        return [
            Span(
                hit.start,
                hit.end,
                self.rule_id,
                self.action,
                recognizer.mask(hit.value) if masking else None,
                recognizer.name,
            )
            for hit in hits
        ]

    def context_start(self, text: str, pos: int) -> int:
        return max(0, pos - self.recognizer.lookbehind)


@dataclass(frozen=True, slots=True)
class GuardResult:
    """What a whole text becomes: the text to return, the spans found, the block if any."""

    text: str
    spans: list[Span]
    blocked: Span | None


class _Writer:
    """Applies spans in order to a text that is read left to right (shared by both modes)."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.cursor = 0  # text before this index has been written
        self.spans: list[Span] = []
        self.blocked: Span | None = None

    def commit(self, spans: list[Span], source: str, base: int) -> None:
        for span in spans:
            if self.blocked is not None:
                return
            self.spans.append(span)
            if span.action == "block":
                self.copy_to(span.start, source, base)
                self.blocked = span
            elif span.action == "mask":
                if span.start >= self.cursor:
                    self.copy_to(span.start, source, base)
                    replacement = span.replacement
                    if replacement is None:
                        replacement = "*" * (span.end - span.start)
                    self.pieces.append(replacement)
                    self.cursor = span.end
                elif span.end > self.cursor:
                    self.pieces.append("*" * (span.end - self.cursor))
                    self.cursor = span.end

    def copy_to(self, upto: int, source: str, base: int) -> None:
        if self.blocked is None and upto > self.cursor:
            self.pieces.append(source[self.cursor - base : upto - base])
            self.cursor = upto

    def drain(self) -> str:
        out = "".join(self.pieces)
        self.pieces.clear()
        return out


def _ordered(found: list[tuple[int, int, int, Span]]) -> list[Span]:
    found.sort(key=lambda item: item[:3])  # stable: keeps each detector's own order
    return [span for *_, span in found]


class Guard:
    """Applies a list of detectors to whole texts (``apply``) or streams (``stream``)."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self.detectors = tuple(detectors)
        # Resolved once per guard, not per stream: isinstance() against a Protocol is slow
        # (~150 µs for seven detectors, more than a whole short answer costs to scan).
        self._scans = tuple(_scan_stream_of(d) for d in self.detectors)
        self._context_starts = tuple(_context_start_of(d) for d in self.detectors)

    def apply(self, text: str) -> GuardResult:
        """Find every span in ``text``, mask, and cut at the first block."""
        found = [
            (span.start, -span.end, index, span)
            for index, detector in enumerate(self.detectors)
            for span in detector.find(text)
        ]
        writer = _Writer()
        writer.commit(_ordered(found), text, 0)
        writer.copy_to(len(text), text, 0)
        return GuardResult(writer.drain(), writer.spans, writer.blocked)

    def stream(self) -> GuardStream:
        """A guard for one streamed answer."""
        return GuardStream(self.detectors, self._scans, self._context_starts)


def _scan_by_lookbehind(detector: Detector, text: str, start: int) -> tuple[int, list[Span]]:
    stable = len(text) - detector.lookbehind
    if stable <= start:
        return stable, []
    return stable, [span for span in detector.find(text) if start <= span.start < stable]


def _scan_stream_of(detector: Detector) -> Callable[[str, int], tuple[int, list[Span]]]:
    if isinstance(detector, StreamDetector):
        return detector.scan_stream
    return partial(_scan_by_lookbehind, detector)


def _context_start_by_lookbehind(lookbehind: int, text: str, pos: int) -> int:
    return max(0, pos - lookbehind)


def _context_start_of(detector: Detector) -> Callable[[str, int], int]:
    # Skip the adapter layer where there is one: this runs for every chunk.
    if isinstance(detector, WordDetector):
        return detector.matcher.context_start
    if isinstance(detector, StreamDetector):
        return detector.context_start
    return partial(_context_start_by_lookbehind, detector.lookbehind)


class GuardStream:
    """Guards one streamed answer: ``feed`` each chunk, then ``finish``.

    Holds back only the tail some detector has not decided yet; keeps, on the left, only the
    context the detectors need, so each chunk costs time in proportion to that, not to the
    answer so far.
    """

    def __init__(
        self,
        detectors: Sequence[Detector],
        scans: Sequence[Callable[[str, int], tuple[int, list[Span]]]] | None = None,
        context_starts: Sequence[Callable[[str, int], int]] | None = None,
    ) -> None:
        self._detectors = tuple(detectors)
        self._scans = tuple(scans or (_scan_stream_of(d) for d in self._detectors))
        self._context_starts = tuple(
            context_starts or (_context_start_of(d) for d in self._detectors)
        )
        self._writer = _Writer()
        self._buffer = ""  # the text from `_base` on
        self._base = 0
        self._stable = 0  # spans starting before this are committed
        self._contexts = [0] * len(self._detectors)  # where each detector's scan starts
        # The detector that held everything back last time is asked first: it likely will again.
        self._order = list(range(len(self._detectors)))
        self._finished = False

    @property
    def blocked(self) -> Span | None:
        """The blocking span, once one is found; nothing is released after it."""
        return self._writer.blocked

    @property
    def spans(self) -> list[Span]:
        """The spans committed so far (all of them after ``finish``)."""
        return list(self._writer.spans)

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the text that is safe to send now."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if self._writer.blocked is not None or not chunk:
            return ""
        self._buffer += chunk
        buffer, base, committed = self._buffer, self._base, self._stable
        stable = base + len(buffer)
        found: list[tuple[int, int, int, Span]] = []
        order = self._order
        for position, index in enumerate(order):
            offset = self._contexts[index]
            end, spans = self._scans[index](buffer[offset - base :], committed - offset)
            end += offset
            if end <= committed:  # this detector holds back everything not yet released
                if position:
                    order.insert(0, order.pop(position))
                return ""
            if end < stable:
                stable = end
            if spans:
                found.extend((s.start + offset, -(s.end + offset), index, s) for s in spans)
        self._commit(stable, [item for item in found if item[0] < stable])
        return self._writer.drain()

    def finish(self) -> str:
        """The end of the answer: return the rest that may be sent."""
        if self._finished:
            return ""
        self._finished = True
        if self._writer.blocked is None:
            buffer, base, committed = self._buffer, self._base, self._stable
            found: list[tuple[int, int, int, Span]] = []
            for index, detector in enumerate(self._detectors):
                offset = self._contexts[index]
                for span in detector.find(buffer[offset - base :]):
                    if span.start + offset >= committed:
                        found.append((span.start + offset, -(span.end + offset), index, span))
            self._commit(base + len(buffer), found)
        return self._writer.drain()

    def _commit(self, stable: int, found: list[tuple[int, int, int, Span]]) -> None:
        buffer, base = self._buffer, self._base
        writer = self._writer
        if found:
            spans = [
                replace(span, start=start, end=-negative_end)
                for start, negative_end, _, span in sorted(found, key=lambda f: f[:3])
            ]
            writer.commit(spans, buffer, base)
        writer.copy_to(stable, buffer, base)
        self._stable = stable
        if writer.blocked is not None:
            self._buffer = ""
            return
        local = stable - base
        for index, context_start in enumerate(self._context_starts):
            self._contexts[index] = base + context_start(buffer, local)
        keep = min(self._contexts, default=stable)
        self._buffer = buffer[keep - base :]
        self._base = keep
