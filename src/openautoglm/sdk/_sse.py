"""Server-Sent Events decoding and the running state of one streamed answer; no I/O.

:class:`SSEDecoder` turns text chunks, split anywhere, into the ``data`` payloads of complete
events. :class:`StreamState` applies payloads of either stream format (native generate chunks or
OpenAI chat chunks) and always holds the text so far, the last usage and finish reason seen, and
whether ``[DONE]`` arrived.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from openautoglm.sdk._protocol import StreamKind, first_choice, parse_usage
from openautoglm.sdk.errors import APIResponseError, error_from_stream_event
from openautoglm.sdk.types import Usage

# Only these end a line in SSE; str.splitlines would also split on U+2028 inside JSON strings.
_LINE_END = re.compile(r"\r\n|\r|\n")
DONE = "[DONE]"


class SSEDecoder:
    """Incremental SSE parser that yields each event's ``data`` (lines joined by newlines)."""

    def __init__(self) -> None:
        self._buffer = ""
        self._data_lines: list[str] = []

    def feed(self, text: str) -> list[str]:
        """Consume a chunk; return the payloads of the events it completed."""
        self._buffer += text
        payloads: list[str] = []
        while (match := _LINE_END.search(self._buffer)) is not None:
            if match.group() == "\r" and match.end() == len(self._buffer):
                break  # may be the first half of a "\r\n" split across chunks
            line = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end() :]
            payload = self._take_line(line)
            if payload is not None:
                payloads.append(payload)
        return payloads

    def finish(self) -> list[str]:
        """Flush at end of stream; an unterminated last event is still delivered."""
        payloads = self.feed("\n") if self._buffer else []
        if self._data_lines:
            payloads.append("\n".join(self._data_lines))
            self._data_lines = []
        return payloads

    def _take_line(self, line: str) -> str | None:
        if not line:
            if not self._data_lines:
                return None
            payload = "\n".join(self._data_lines)
            self._data_lines = []
            return payload
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data_lines.append(value[1:] if value.startswith(" ") else value)
        return None


class StreamState:
    """What has arrived so far on one stream; :meth:`apply` raises a mid-stream error event."""

    def __init__(self, kind: StreamKind, request_id: str | None) -> None:
        self.kind = kind
        self.request_id = request_id
        self.id: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.is_done = False
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """All text received so far."""
        return "".join(self._parts)

    def apply(self, payload: str) -> str:
        """Take one event payload; return its text delta (may be empty)."""
        if payload.strip() == DONE:
            self.is_done = True
            return ""
        chunk = self._decode(payload)
        if "error" in chunk:
            self.is_done = True
            raise error_from_stream_event(chunk, self.request_id)
        if isinstance(chunk.get("id"), str):
            self.id = chunk["id"]
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        self.usage = parse_usage(chunk.get("usage")) or self.usage
        source = chunk if self.kind == "generate" else first_choice(chunk)
        if source is None:  # e.g. the usage-only final chunk of an OpenAI stream
            return ""
        if isinstance(source.get("finish_reason"), str):
            self.finish_reason = source["finish_reason"]
        delta = self._delta_text(source)
        self._parts.append(delta)
        return delta

    def check_complete(self) -> None:
        """Refuse a stream that ended without ``[DONE]`` or a finish reason (cut off)."""
        if not self.is_done and self.finish_reason is None:
            raise APIResponseError("stream ended before completion", request_id=self.request_id)

    def _decode(self, payload: str) -> dict[str, Any]:
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise APIResponseError(
                f"bad stream event {payload[:100]!r}", request_id=self.request_id
            ) from exc
        if not isinstance(chunk, dict):
            raise APIResponseError(
                f"stream event is not an object: {payload[:100]!r}", request_id=self.request_id
            )
        return chunk

    def _delta_text(self, source: Mapping[str, Any]) -> str:
        if self.kind == "generate":
            text = source.get("text")
        else:
            delta = source.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
        return text if isinstance(text, str) else ""
