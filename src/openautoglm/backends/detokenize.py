"""Incremental detokenisation for local engines: token ids in, clean text deltas out.

Invariant: an emitted delta never ends in an incomplete character (no U+FFFD from a multi-byte
character split across tokens) and never holds text that could still become a stop string.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from openautoglm.backends.base import apply_stop

_INCOMPLETE = "\ufffd"


def _held_back_length(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class IncrementalDetokenizer:
    """A ``generate`` streamer: turns token ids into text deltas and cuts at stop strings.

    ``put`` and ``end`` are called by ``model.generate`` in the model thread; each delta goes to
    ``emit``. The first ``put`` (the prompt) is skipped. A stop string hit sets ``stop_event``.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        emit: Callable[[str], None],
        stops: Sequence[str] = (),
        stop_event: threading.Event | None = None,
    ) -> None:
        self._decode = decode
        self._emit = emit
        self._stops = tuple(stop for stop in stops if stop)
        self._stop_event = stop_event or threading.Event()
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._pending = ""
        self._skip_prompt = True
        self.stop_hit = False

    def put(self, value: Any) -> None:
        """Take the next token ids (a tensor of one sequence); the first call is the prompt."""
        if self._skip_prompt:
            self._skip_prompt = False
            return
        self.feed(value.reshape(-1).tolist())

    def feed(self, token_ids: Sequence[int]) -> None:
        """Take newly generated token ids (no prompt); emits whatever became whole text."""
        self._ids.extend(int(token) for token in token_ids)
        # Decode from an earlier offset so a token's leading space survives; emit only once the
        # new text decodes to whole characters.
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) > len(prefix) and not text.endswith(_INCOMPLETE):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            self._push(text[len(prefix) :], final=False)

    def end(self) -> None:
        """Flush what was held back; a trailing incomplete character is dropped."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        self._push(text[len(prefix) :].rstrip(_INCOMPLETE), final=True)

    def _push(self, delta: str, final: bool) -> None:
        if self.stop_hit:
            return
        self._pending += delta
        kept, hit = apply_stop(self._pending, self._stops)
        if hit:
            self.stop_hit = True
            self._stop_event.set()
            self._pending = ""
        else:
            held = 0 if final else _held_back_length(kept, self._stops)
            self._pending = kept[len(kept) - held :] if held else ""
            kept = kept[: len(kept) - held]
        if kept:
            self._emit(kept)
