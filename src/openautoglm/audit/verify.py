"""Checking a whole stored log: the chain, the indexed columns, and the signed checkpoints.

Where the check starts: at event 1 from the genesis hash, or — after retention deleted the
oldest events — just after the newest validly signed ``prune`` checkpoint older than the first
stored event, from that checkpoint's hash. So deleting old events without the signing key (or
deleting the anchor) is reported as missing events, never accepted as retention.

Reported: the lowest seq at which anything fails — a chain break (``chain.ChainVerifier``), a
checkpoint whose signature is not this key's, a checkpoint whose hash differs from the chain
at its seq, or a checkpoint beyond the chain's end (events deleted from the tail).
"""

from __future__ import annotations

from collections import defaultdict

from openautoglm.audit.chain import Break, ChainVerifier
from openautoglm.audit.model import GENESIS_HASH, VerifyReport
from openautoglm.audit.ports import AuditStore
from openautoglm.audit.signing import Checkpoint, CheckpointVerifier

BATCH = 5000


def _signature_breaks(
    checkpoints: list[Checkpoint], verifier: CheckpointVerifier | None
) -> tuple[list[Checkpoint], list[Break]]:
    valid, broken = [], []
    for checkpoint in checkpoints:
        problem = (
            f"checkpoint at seq {checkpoint.seq} cannot be checked: no audit signing key"
            if verifier is None
            else verifier.problem(checkpoint)
        )
        if problem is None:
            valid.append(checkpoint)
        else:
            broken.append(Break(checkpoint.seq, problem))
    return valid, broken


def _anchor(valid: list[Checkpoint], first_seq: int | None) -> Checkpoint | None:
    anchors = [c for c in valid if c.kind == "prune" and (first_seq is None or c.seq < first_seq)]
    return max(anchors, key=lambda c: c.seq, default=None)


async def verify_log(store: AuditStore, verifier: CheckpointVerifier | None) -> VerifyReport:
    """Check every stored event and checkpoint; see the module docstring."""
    valid, breaks = _signature_breaks(await store.checkpoints(), verifier)
    first_seq = await store.first_seq()
    anchor = _anchor(valid, first_seq)
    start_seq, start_hash = (anchor.seq + 1, anchor.hash) if anchor else (1, GENESIS_HASH)
    pinned: dict[int, list[Checkpoint]] = defaultdict(list)
    for checkpoint in valid:
        if checkpoint.seq >= start_seq:
            pinned[checkpoint.seq].append(checkpoint)
    num_confirmed = len(valid) - sum(len(each) for each in pinned.values())

    chain = ChainVerifier(start_seq, start_hash)
    position = start_seq - 1
    chain_break: Break | None = None
    while chain_break is None:
        batch = await store.links(position, BATCH)
        for each in batch:
            chain_break = chain.check(each)
            if chain_break is not None:
                break
            for checkpoint in pinned.pop(each.seq, []):
                if checkpoint.hash != each.hash:
                    chain_break = Break(
                        each.seq, f"checkpoint at seq {each.seq} does not match the chain"
                    )
                    break
                num_confirmed += 1
            if chain_break is not None:
                break
        if len(batch) < BATCH:
            break
        position = batch[-1].seq
    last_seq = chain.next_seq - 1
    if chain_break is None and pinned:
        beyond = min(pinned)
        chain_break = Break(
            last_seq + 1,
            f"checkpoint at seq {beyond} is beyond the last event {last_seq}: events are missing",
        )
    if chain_break is not None:
        breaks.append(chain_break)
    first = min(breaks, key=lambda b: b.seq, default=None)
    return VerifyReport(
        ok=first is None,
        checked=chain.checked,
        first_broken_seq=None if first is None else first.seq,
        reason=None if first is None else first.reason,
        checkpoints=num_confirmed,
        first_seq=first_seq,
        last_seq=last_seq if chain.checked else None,
    )
