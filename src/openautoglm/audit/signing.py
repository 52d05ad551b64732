"""Signed checkpoints: an Ed25519 signature over the chain head at a moment.

A checkpoint signs ``(seq, hash, created_at, kind)``. ``periodic`` ones pin the chain so that
rewriting it (recomputing every later hash) is caught up to the newest checkpoint; a ``prune``
checkpoint marks the last event retention deleted, and verification starts from its hash.

The private key is PEM (PKCS#8) in one file, created on first use with mode 0600; it is never
logged or returned. Every replica that signs must share the same key file: checkpoints signed
by another key are reported as unverifiable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from openautoglm.audit.chain import format_time
from openautoglm.audit.model import ChainHead

logger = logging.getLogger(__name__)
CheckpointKind = Literal["periodic", "prune"]
DEFAULT_KEY_FILE = "audit_signing.key"
_DOMAIN = b"openautoglm-audit-checkpoint/1\n"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that the chain had ``hash`` at ``seq`` (``signature``: base64)."""

    seq: int
    hash: str
    created_at: datetime
    kind: CheckpointKind
    key_fingerprint: str
    signature: str


def checkpoint_message(seq: int, hash_: str, created_at: datetime, kind: str) -> bytes:
    """The exact bytes a checkpoint's signature covers."""
    return _DOMAIN + f"{seq}\n{hash_}\n{format_time(created_at)}\n{kind}".encode()


def fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def signing_key_path(signing_key_file: Path | None, data_dir: Path) -> Path:
    """The configured key file, or ``<data_dir>/audit_signing.key``."""
    return (signing_key_file or data_dir / DEFAULT_KEY_FILE).expanduser()


def _read_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("audit signing key %s is readable by others (mode %o)", path, mode)
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``; a new one written there (mode 0600) if the file does not exist.

    Two processes creating it at once end up with the same key: each writes a private temporary
    file and links it into place, and the one that loses the race reads the winner's.
    """
    if path.exists():
        return _read_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
        os.link(temporary, path)
    except FileExistsError:
        return _read_key(path)
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("created audit signing key %s", path)
    return key


class CheckpointVerifier:
    """Checks checkpoint signatures against one public key."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self._public_key = public_key
        self.fingerprint = fingerprint(public_key)

    def problem(self, checkpoint: Checkpoint) -> str | None:
        """``None`` if ``checkpoint`` is signed by this key; else why not (no key material)."""
        where = f"checkpoint at seq {checkpoint.seq}"
        if checkpoint.key_fingerprint != self.fingerprint:
            return f"{where} is signed by an unknown key"
        try:
            signature = base64.b64decode(checkpoint.signature, validate=True)
            message = checkpoint_message(
                checkpoint.seq, checkpoint.hash, checkpoint.created_at, checkpoint.kind
            )
            self._public_key.verify(signature, message)
        except (InvalidSignature, binascii.Error, ValueError):
            return f"{where} has an invalid signature"
        return None


class CheckpointSigner:
    """Signs chain heads with the audit private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.verifier = CheckpointVerifier(private_key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> CheckpointSigner:
        """The signer whose key is in ``path`` (created there on first use)."""
        return cls(load_or_create_key(path))

    def __repr__(self) -> str:
        return f"CheckpointSigner({self.verifier.fingerprint})"

    def sign(self, head: ChainHead, created_at: datetime, kind: CheckpointKind) -> Checkpoint:
        message = checkpoint_message(head.seq, head.hash, created_at, kind)
        signature = base64.b64encode(self._private_key.sign(message)).decode("ascii")
        return Checkpoint(
            head.seq, head.hash, created_at, kind, self.verifier.fingerprint, signature
        )


def verifier_from_file(path: Path) -> CheckpointVerifier | None:
    """The verifier for the key in ``path``, or ``None`` if there is no key file (yet)."""
    if not path.exists():
        return None
    return CheckpointVerifier(_read_key(path).public_key())
