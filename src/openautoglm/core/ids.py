"""Identifiers: request ids, object ids and API key material."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_token(num_chars: int) -> str:
    """A random base62 string from the OS CSPRNG (log2(62) ≈ 5.95 bits per character)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(num_chars))


def new_request_id() -> str:
    """A request id: 24 hex characters, cheap enough for every request."""
    return secrets.token_hex(12)


def new_object_id(prefix: str) -> str:
    """An object id such as ``ten_3kT9...``: prefix, underscore, 20 base62 characters."""
    return f"{prefix}_{random_token(20)}"
