"""The public shape of an event, and its JSONL and CSV encodings (API export and CLI export).

Invariant: JSONL lines and CSV rows carry the same fields as the API's event objects, with
``seq``, ``prev_hash`` and ``hash`` so an export can be checked against the chain. In CSV,
nested fields are JSON text, and a text cell that a spreadsheet would run as a formula (it
starts with ``=``, ``+``, ``-``, ``@``, tab or carriage return) is prefixed with ``'``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from openautoglm.audit.chain import format_time
from openautoglm.audit.model import AuditEvent
from openautoglm.audit.ports import AuditPage

ExportFormat = Literal["jsonl", "csv"]
MEDIA_TYPES: dict[str, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
CSV_COLUMNS = (
    "seq",
    "occurred_at",
    "request_id",
    "kind",
    "endpoint",
    "status",
    "tenant_id",
    "key_id",
    "role",
    "action",
    "model",
    "version",
    "instance",
    "error_code",
    "client_ip",
    "stages",
    "usage",
    "decisions",
    "prompt",
    "answer",
    "detail",
    "prev_hash",
    "hash",
)
_NESTED = frozenset({"stages", "usage", "decisions", "detail"})
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def event_dict(event: AuditEvent) -> dict[str, Any]:
    """An event as the API shows it (``occurred_at`` in ISO-8601 UTC with microseconds), with
    the fields in ``CSV_COLUMNS`` order."""
    chained = {"seq": event.seq, "prev_hash": event.prev_hash, "hash": event.hash}
    shown: dict[str, Any] = {"object": "audit.event"}
    for name in CSV_COLUMNS:
        shown[name] = chained[name] if name in chained else _plain(getattr(event.record, name))
    return shown


def _plain(value: Any) -> Any:
    """A record field as JSON-ready data."""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return [dict(item) for item in value]  # decisions: a sequence of mappings
    return value


def jsonl_lines(events: Iterable[AuditEvent]) -> str:
    return "".join(json.dumps(event_dict(e), ensure_ascii=False) + "\n" for e in events)


def _cell(name: str, value: Any) -> Any:
    if value is None:
        return ""
    if name in _NESTED:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def csv_lines(events: Iterable[AuditEvent], *, header: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for event in events:
        shown = event_dict(event)
        writer.writerow([_cell(name, shown[name]) for name in CSV_COLUMNS])
    return buffer.getvalue()


async def encode_pages(
    pages: AsyncIterator[AuditPage], export_format: ExportFormat
) -> AsyncIterator[str]:
    """The export as text chunks, one per page (CSV starts with its header row)."""
    if export_format == "csv":
        yield csv_lines((), header=True)
    async for page in pages:
        if page.events:
            yield (csv_lines(page.events) if export_format == "csv" else jsonl_lines(page.events))
