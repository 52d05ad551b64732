"""The hash chain: canonical payloads, hashes, and the detection of every kind of tampering."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from tests.unit.audit.support import T0, make_record

from openautoglm.audit.chain import (
    encode_payload,
    event_from_payload,
    link,
    link_hash,
    record_body,
    verify,
)
from openautoglm.audit.model import GENESIS_HASH, AuditEvent, ChainHead, content_for


def chained(n: int) -> list[AuditEvent]:
    return [each.event for each in link([make_record(i) for i in range(n)], None)]


def test_payload_is_canonical_json_with_every_field() -> None:
    record = make_record(
        1,
        stages={"z_first": 1.23456789, "a_second": 2.0},
        decisions=[{"rule": "pii.phone", "action": "mask", "stage": "input"}],
        detail={"b": 1, "a": [1.5, "x"], "when": datetime(2026, 1, 1, tzinfo=UTC)},
        prompt='你好 \u0000 "quoted"',
    )
    payload = encode_payload(record_body(record), 7, "ab" * 32)
    document = json.loads(payload)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert payload == canonical.encode("utf-8")
    assert list(document) == sorted(document)  # keys sorted
    assert document["seq"] == 7 and document["prev_hash"] == "ab" * 32
    assert document["occurred_at"] == "2026-03-01T12:00:01.123456Z"
    # Stages keep the call order (a list of pairs), floats are rounded to 6 decimals.
    assert document["stages"] == [["z_first", 1.234568], ["a_second", 2.0]]
    assert document["detail"] == {"a": [1.5, "x"], "b": 1, "when": "2026-01-01T00:00:00.000000Z"}
    assert "你好".encode() in payload  # UTF-8, not \\u escapes
    expected_fields = {f.name for f in dataclasses.fields(record)} | {"seq", "prev_hash", "v"}
    assert set(document) == expected_fields


def test_the_same_record_always_gives_the_same_bytes() -> None:
    eastern = timezone(timedelta(hours=8))
    a = make_record(3, occurred_at=(T0 + timedelta(seconds=3)).astimezone(eastern))
    b = make_record(3, detail={"y": 2, "x": 1})
    c = make_record(3, detail={"x": 1, "y": 2})
    assert encode_payload(record_body(a), 1, GENESIS_HASH) == encode_payload(
        record_body(make_record(3)), 1, GENESIS_HASH
    )
    assert encode_payload(record_body(b), 1, GENESIS_HASH) == encode_payload(
        record_body(c), 1, GENESIS_HASH
    )


def test_hashes_link_each_event_to_the_one_before() -> None:
    events = chained(3)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS_HASH == "0" * 64
    payload = encode_payload(record_body(events[0].record), 1, GENESIS_HASH)
    assert events[0].hash == hashlib.sha256(bytes(32) + payload).hexdigest()
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    assert verify(events).ok and verify(events).checked == 3


def test_a_batch_continues_after_the_head() -> None:
    first = chained(2)
    more = link([make_record(9)], ChainHead(first[-1].seq, first[-1].hash))
    assert more[0].event.seq == 3 and more[0].event.prev_hash == first[-1].hash
    report = verify([*first, more[0].event])
    assert report.ok and report.last_seq == 3


def test_payload_round_trips_to_the_same_event() -> None:
    linked = link(
        [make_record(4, decisions=[{"rule": "r1", "action": "block", "stage": "output"}])], None
    )[0]
    again = event_from_payload(linked.payload, linked.event.hash)
    assert again == linked.event
    assert again.record.rule_ids == ("r1",)


def test_an_edited_field_breaks_the_chain_at_that_event() -> None:
    events = chained(5)
    events[2] = dataclasses.replace(
        events[2], record=dataclasses.replace(events[2].record, status=500)
    )
    report = verify(events)
    assert not report.ok
    assert report.first_broken_seq == 3 and report.checked == 2
    assert report.reason == "hash of event 3 does not match its payload"


def test_a_deleted_event_is_reported_missing() -> None:
    events = chained(5)
    del events[1]
    report = verify(events)
    assert (report.ok, report.first_broken_seq) == (False, 2)
    assert report.reason == "event 2 is missing (next stored event: 3)"


def test_a_rehashed_edit_is_caught_by_the_next_link() -> None:
    events = chained(5)
    record = dataclasses.replace(events[1].record, answer="rewritten")
    payload = encode_payload(record_body(record), 2, events[1].prev_hash)
    events[1] = AuditEvent(2, record, events[1].prev_hash, link_hash(events[1].prev_hash, payload))
    report = verify(events)
    assert report.first_broken_seq == 3
    assert report.reason == "prev_hash of event 3 does not match the hash of event 2"


def test_swapped_events_are_detected_at_the_first_of_them() -> None:
    events = chained(6)
    events[1], events[4] = events[4], events[1]
    report = verify(events)
    assert report.first_broken_seq == 2
    assert report.reason == "event 2..4 is missing (next stored event: 5)"


def test_an_inserted_event_is_detected() -> None:
    events = chained(4)
    forged = link([make_record(99)], ChainHead(2, events[1].hash))[0].event
    # Spliced in after event 2, later events renumbered to make room.
    renumbered = [dataclasses.replace(e, seq=e.seq + 1) for e in events[2:]]
    report = verify([*events[:2], forged, *renumbered])
    assert not report.ok and report.first_broken_seq == 4


def test_verification_can_start_after_a_known_event() -> None:
    events = chained(6)
    report = verify(events[3:], start_prev_hash=events[2].hash, start_seq=4)
    assert report.ok and report.checked == 3 and report.first_seq == 4
    wrong_start = verify(events[3:], start_prev_hash=events[1].hash, start_seq=4)
    assert wrong_start.first_broken_seq == 4


def test_records_refuse_what_cannot_be_audited() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_record(occurred_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="kind"):
        make_record(kind="other")
    with pytest.raises(ValueError, match="NaN"):
        record_body(make_record(detail={"x": float("nan")}))
    with pytest.raises(TypeError):
        record_body(make_record(detail={"x": object()}))


def test_content_modes() -> None:
    assert content_for("none", "secret") is None
    assert content_for("hash", "secret") == ("sha256:" + hashlib.sha256(b"secret").hexdigest())
    assert content_for("masked", "call 555-1234", "call ***") == "call ***"
    assert content_for("full", "secret") == "secret"
    assert content_for("full", None) is None
