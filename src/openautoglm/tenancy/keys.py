"""API key material: generation and hashing.

Keys are 256 bits from the OS CSPRNG, so a single SHA-256 is the right hash (no stretching
needed, ~0.5 µs); only the hash and a short visible prefix are ever stored.
"""

from __future__ import annotations

import hashlib

from openautoglm.core.ids import random_token

KEY_PREFIX = "sk-agl-"
_SECRET_CHARS = 43  # 43 base62 characters ≈ 256 bits
VISIBLE_PREFIX_CHARS = len(KEY_PREFIX) + 6


def generate_secret() -> str:
    """A new API key secret such as ``sk-agl-3kT9…``."""
    return KEY_PREFIX + random_token(_SECRET_CHARS)


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of the key; what the store indexes."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def visible_prefix(secret: str) -> str:
    """The part of a key shown in listings, enough to tell keys apart."""
    return secret[:VISIBLE_PREFIX_CHARS]
