"""Signed checkpoints: the key file, signatures, and what verification makes of them."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.unit.audit.support import T0, make_record

from openautoglm.audit.model import ChainHead
from openautoglm.audit.ports import InMemoryAuditStore
from openautoglm.audit.signing import (
    CheckpointSigner,
    load_or_create_key,
    signing_key_path,
    verifier_from_file,
)
from openautoglm.audit.verify import verify_log


def test_the_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = signing_key_path(None, tmp_path / "data")
    assert path == tmp_path / "data" / "audit_signing.key"
    first = CheckpointSigner.from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = CheckpointSigner.from_file(path)
    assert again.verifier.fingerprint == first.verifier.fingerprint
    assert "PRIVATE" not in repr(first)
    assert [p.name for p in path.parent.iterdir()] == ["audit_signing.key"]  # no temp files
    assert signing_key_path(tmp_path / "k.pem", tmp_path) == tmp_path / "k.pem"


async def test_concurrent_first_use_ends_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / "audit_signing.key"
    keys = await asyncio.gather(*(asyncio.to_thread(load_or_create_key, path) for _ in range(8)))
    verifier = verifier_from_file(path)
    assert verifier is not None
    signer = CheckpointSigner(keys[0])
    signed = signer.sign(ChainHead(1, "ab" * 32), T0, "periodic")
    # Whoever lost the race must hold the key on disk, or its checkpoints would not verify.
    for key in keys:
        assert CheckpointSigner(key).verifier.fingerprint == verifier.fingerprint
    assert verifier.problem(signed) is None


def test_signatures_cover_every_field(tmp_path: Path) -> None:
    signer = CheckpointSigner.from_file(tmp_path / "k")
    checkpoint = signer.sign(ChainHead(10, "cd" * 32), T0, "periodic")
    verifier = signer.verifier
    assert verifier.problem(checkpoint) is None
    for change in (
        {"seq": 11},
        {"hash": "ce" * 32},
        {"created_at": T0.replace(microsecond=1)},
        {"kind": "prune"},
        {"signature": "not base64!"},
    ):
        altered = dataclasses.replace(checkpoint, **change)
        where = f"checkpoint at seq {altered.seq}"
        assert verifier.problem(altered) == f"{where} has an invalid signature", change
    stranger = CheckpointSigner(Ed25519PrivateKey.generate())
    forged = stranger.sign(ChainHead(10, "cd" * 32), T0, "periodic")
    assert verifier.problem(forged) == "checkpoint at seq 10 is signed by an unknown key"
    # Claiming our fingerprint does not help a signature made with another key.
    claimed = dataclasses.replace(forged, key_fingerprint=verifier.fingerprint)
    assert verifier.problem(claimed) == "checkpoint at seq 10 has an invalid signature"


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner.from_file(tmp_path / "audit_signing.key")


async def test_verification_counts_and_checks_checkpoints(signer: CheckpointSigner) -> None:
    store = InMemoryAuditStore()
    events = await store.append([make_record(i) for i in range(5)])
    await store.add_checkpoint(signer.sign(ChainHead(3, events[2].hash), T0, "periodic"))
    await store.add_checkpoint(signer.sign(ChainHead(5, events[4].hash), T0, "periodic"))
    report = await verify_log(store, signer.verifier)
    assert (report.ok, report.checked, report.checkpoints) == (True, 5, 2)


async def test_a_checkpoint_that_disagrees_with_the_chain_is_reported(
    signer: CheckpointSigner,
) -> None:
    store = InMemoryAuditStore()
    await store.append([make_record(i) for i in range(5)])
    await store.add_checkpoint(signer.sign(ChainHead(4, "ee" * 32), T0, "periodic"))
    report = await verify_log(store, signer.verifier)
    assert (report.ok, report.first_broken_seq) == (False, 4)
    assert report.reason == "checkpoint at seq 4 does not match the chain"


async def test_a_forged_checkpoint_is_reported(signer: CheckpointSigner) -> None:
    store = InMemoryAuditStore()
    events = await store.append([make_record(i) for i in range(5)])
    stranger = CheckpointSigner(Ed25519PrivateKey.generate())
    await store.add_checkpoint(stranger.sign(ChainHead(2, events[1].hash), T0, "periodic"))
    report = await verify_log(store, signer.verifier)
    assert (report.ok, report.first_broken_seq) == (False, 2)
    assert report.reason == "checkpoint at seq 2 is signed by an unknown key"
    assert report.checked == 5  # the chain itself was still checked


async def test_a_checkpoint_beyond_the_end_means_events_were_cut_off(
    signer: CheckpointSigner,
) -> None:
    source = InMemoryAuditStore()
    events = await source.append([make_record(i) for i in range(6)])
    truncated = InMemoryAuditStore()
    await truncated.append([make_record(i) for i in range(4)])  # same records, same hashes
    await truncated.add_checkpoint(signer.sign(ChainHead(6, events[5].hash), T0, "periodic"))
    report = await verify_log(truncated, signer.verifier)
    assert (report.ok, report.first_broken_seq, report.checked) == (False, 5, 4)


async def test_without_the_key_checkpoints_cannot_be_trusted(signer: CheckpointSigner) -> None:
    store = InMemoryAuditStore()
    events = await store.append([make_record(0)])
    await store.add_checkpoint(signer.sign(ChainHead(1, events[0].hash), T0, "periodic"))
    report = await verify_log(store, None)
    assert not report.ok and report.first_broken_seq == 1
    assert "no audit signing key" in (report.reason or "")
