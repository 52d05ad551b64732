"""The hash chain: canonical JSON of an event, its hash, and the check of a run of events.

The canonical payload of event ``seq`` is UTF-8 JSON with sorted keys and no whitespace holding
every ``AuditRecord`` field plus ``seq``, ``prev_hash`` and the format version ``v``:

- datetimes are ISO-8601 UTC with microseconds and a ``Z`` (``2026-01-01T00:00:00.000000Z``);
- every float is rounded to 6 decimals (NaN and infinities are refused);
- ``stages`` is a list of ``[name, ms]`` pairs, because sorted keys would lose the call order;
- ``decisions`` keep their order; keys inside each mapping are sorted like everywhere else.

``hash = sha256(bytes.fromhex(prev_hash) + payload)``, hex; event 1 links to ``GENESIS_HASH``.
Invariant: for a valid chain, ``events[i].prev_hash == events[i-1].hash`` and seqs are gapless, so
editing, deleting, inserting or reordering stored events breaks the check at a definite seq.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from openautoglm.audit.model import (
    GENESIS_HASH,
    AuditEvent,
    AuditRecord,
    ChainHead,
    VerifyReport,
)

FORMAT_VERSION = 1
FLOAT_DECIMALS = 6


def format_time(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds: the one spelling of a time in a payload."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def canonical_value(value: Any) -> Any:
    """``value`` as plain JSON types with floats rounded; ``TypeError``/``ValueError`` if it
    cannot be one."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("audit payloads cannot hold NaN or infinite numbers")
        return round(value, FLOAT_DECIMALS)
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("audit payload mappings need string keys")
        return {key: canonical_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical_value(item) for item in value]
    raise TypeError(f"cannot put a {type(value).__name__} into an audit payload")


def _rounded(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("audit payloads cannot hold NaN or infinite numbers")
    return round(value, FLOAT_DECIMALS)


def record_body(record: AuditRecord) -> dict[str, Any]:
    """The record's fields as canonical JSON values (everything but ``seq``/``prev_hash``)."""
    return {
        "v": FORMAT_VERSION,
        "request_id": record.request_id,
        "occurred_at": format_time(record.occurred_at),
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
        "stages": [[str(name), _rounded(float(ms))] for name, ms in record.stages.items()],
        "usage": None if record.usage is None else canonical_value(record.usage),
        "decisions": [
            {str(k): str(v) for k, v in decision.items()} for decision in record.decisions
        ],
        "prompt": record.prompt,
        "answer": record.answer,
        "detail": None if record.detail is None else canonical_value(record.detail),
    }


def record_from_body(body: Mapping[str, Any]) -> AuditRecord:
    """The record a canonical body describes (the inverse of ``record_body``)."""
    return AuditRecord(
        request_id=body["request_id"],
        occurred_at=parse_time(body["occurred_at"]),
        kind=body["kind"],
        endpoint=body["endpoint"],
        status=body["status"],
        tenant_id=body["tenant_id"],
        key_id=body["key_id"],
        role=body["role"],
        action=body["action"],
        model=body["model"],
        version=body["version"],
        instance=body["instance"],
        error_code=body["error_code"],
        client_ip=body["client_ip"],
        stages=dict(body["stages"]),
        usage=body["usage"],
        decisions=tuple(body["decisions"]),
        prompt=body["prompt"],
        answer=body["answer"],
        detail=body["detail"],
    )


def encode_payload(body: Mapping[str, Any], seq: int, prev_hash: str) -> bytes:
    """The canonical JSON bytes that are hashed (and stored).

    Written with orjson (about ten times faster than ``json`` on the write path); text that is
    not valid Unicode (a lone surrogate) takes the ``json`` path, which escapes it. Verification
    hashes the stored bytes, so the encoder only has to be deterministic, which both are.
    """
    document = {**body, "seq": seq, "prev_hash": prev_hash}
    try:
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8", "backslashreplace")


def decode_payload(payload: bytes | str) -> dict[str, Any]:
    """The stored payload as a dict; ``ValueError`` if it is not a JSON object."""
    document = json.loads(payload)
    if not isinstance(document, dict):
        raise ValueError("payload is not a JSON object")
    return document


def event_from_payload(payload: bytes | str, hash_: str) -> AuditEvent:
    """The event a stored payload holds."""
    document = decode_payload(payload)
    return AuditEvent(document["seq"], record_from_body(document), document["prev_hash"], hash_)


def link_hash(prev_hash: str, payload: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + payload).hexdigest()


@dataclass(frozen=True, slots=True)
class Linked:
    """An event and the exact payload bytes its hash covers."""

    event: AuditEvent
    payload: bytes


def link(records: Sequence[AuditRecord], head: ChainHead | None) -> list[Linked]:
    """Chain ``records`` after ``head`` (``None``: an empty log) with consecutive seqs."""
    seq, prev_hash = (head.seq, head.hash) if head is not None else (0, GENESIS_HASH)
    linked = []
    for record in records:
        seq += 1
        body = record_body(record)
        payload = encode_payload(body, seq, prev_hash)
        digest = link_hash(prev_hash, payload)
        linked.append(Linked(AuditEvent(seq, record_from_body(body), prev_hash, digest), payload))
        prev_hash = digest
    return linked


@dataclass(frozen=True, slots=True)
class StoredLink:
    """One stored event as the verifier sees it.

    ``defect`` is set by a store that found the row inconsistent with its own payload (an indexed
    column that differs from the hashed payload, say); the chain check reports it at ``seq``.
    """

    seq: int
    prev_hash: str
    hash: str
    payload: bytes
    defect: str | None = None


def stored_link(event: AuditEvent) -> StoredLink:
    """The link of an event held in memory (its payload rebuilt from its fields)."""
    payload = encode_payload(record_body(event.record), event.seq, event.prev_hash)
    return StoredLink(event.seq, event.prev_hash, event.hash, payload)


@dataclass(frozen=True, slots=True)
class Break:
    seq: int
    reason: str


class ChainVerifier:
    """Checks links one at a time, in stored seq order, from a known starting point."""

    def __init__(self, start_seq: int = 1, start_prev_hash: str = GENESIS_HASH) -> None:
        self.next_seq = start_seq
        self.prev_hash = start_prev_hash
        self.checked = 0

    def check(self, link: StoredLink) -> Break | None:
        """``None`` if ``link`` continues the chain; else where and why it breaks."""
        expected = self.next_seq
        if link.seq < expected:
            return Break(link.seq, f"event {link.seq} is out of order (expected {expected})")
        if link.seq > expected:
            missing = f"{expected}" if link.seq == expected + 1 else f"{expected}..{link.seq - 1}"
            return Break(expected, f"event {missing} is missing (next stored event: {link.seq})")
        if link.prev_hash != self.prev_hash:
            before = f"the hash of event {expected - 1}" if expected > 1 else "the genesis hash"
            return Break(expected, f"prev_hash of event {expected} does not match {before}")
        try:
            digest = link_hash(link.prev_hash, link.payload)
        except ValueError:
            return Break(expected, f"prev_hash of event {expected} is not a hex digest")
        if digest != link.hash:
            return Break(expected, f"hash of event {expected} does not match its payload")
        if link.defect is not None:
            return Break(expected, link.defect)
        self.next_seq = expected + 1
        self.prev_hash = link.hash
        self.checked += 1
        return None


def verify_links(
    links: Iterable[StoredLink], start_prev_hash: str = GENESIS_HASH, start_seq: int = 1
) -> VerifyReport:
    """Check a run of stored links that should start at ``start_seq``."""
    verifier = ChainVerifier(start_seq, start_prev_hash)
    first: int | None = None
    for each in links:
        first = each.seq if first is None else first
        broken = verifier.check(each)
        if broken is not None:
            return VerifyReport(False, verifier.checked, broken.seq, broken.reason, 0, first)
    last = verifier.next_seq - 1 if verifier.checked else None
    return VerifyReport(True, verifier.checked, None, None, 0, first, last)


def verify(
    events: Iterable[AuditEvent], start_prev_hash: str = GENESIS_HASH, start_seq: int = 1
) -> VerifyReport:
    """Check events in memory: each hash recomputed from its fields, each link to the one before."""
    return verify_links((stored_link(e) for e in events), start_prev_hash, start_seq)
