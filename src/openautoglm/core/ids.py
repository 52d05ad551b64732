"""Identifiers: request ids, object ids and API key material."""

from __future__ import annotations

import itertools
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_token(num_chars: int) -> str:
    """A random base62 string from the OS CSPRNG (log2(62) ≈ 5.95 bits per character)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(num_chars))


class RequestIds:
    """Request ids: 24 hex characters, unique across processes, cheap enough for every request.

    A random 48-bit prefix per generator (per process) plus a 48-bit counter: no system call
    per request, and replicas cannot collide in practice.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(secrets.randbelow(1 << 32))

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


def new_object_id(prefix: str) -> str:
    """An object id such as ``ten_3kT9...``: prefix, underscore, 20 base62 characters."""
    return f"{prefix}_{random_token(20)}"
