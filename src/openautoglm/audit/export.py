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
from collections.abc import AsyncIterator, Iterable
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
    """An event as the API shows it (``occurred_at`` in ISO-8601 UTC with microseconds)."""
    record = event.record
    return {
        "object": "audit.event",
        "seq": event.seq,
        "occurred_at": format_time(record.occurred_at),
        "request_id": record.request_id,
        "kind": record.kind,
        "endpoint": record.endpoint,
        "status": record.status,
        "tenant_id": record.tenant_id,
        "key_id": record.key_id,
        "role": record.role,
        "action": record.action,
        "model": record.model,
        "version": record.version,
        "instance": record.instance,
        "error_code": record.error_code,
        "client_ip": record.client_ip,
        "stages": dict(record.stages),
        "usage": None if record.usage is None else dict(record.usage),
        "decisions": [dict(decision) for decision in record.decisions],
        "prompt": record.prompt,
        "answer": record.answer,
        "detail": None if record.detail is None else dict(record.detail),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


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
