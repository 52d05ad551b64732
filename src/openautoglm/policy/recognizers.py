"""E-mail, IP-address and custom-regex recognisers, and the registry of the built-in ones.

The digit-based recognisers (phones, 身份证, bank cards) and the shared base live in ``pii``.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterable
from functools import partial

from openautoglm.policy.pii import (
    ANY_DIGIT,
    DIGITS,
    PRIORITY,
    BankCardRecognizer,
    IdCardRecognizer,
    MaskShape,
    MobileRecognizer,
    PiiHit,
    Recognizer,
    RecognizerBase,
    ascii_alnum,
    mask_chars,
)

_LOCAL_CHARS = frozenset(string.ascii_letters + string.digits + "._%+-")
_HEX_RUN_CHARS = frozenset(string.hexdigits + ":.")


class EmailRecognizer(RecognizerBase):
    """ASCII e-mail addresses, found from their ``@``; the mask keeps the first character."""

    name = "email"
    required = re.compile("@")
    hold_chars = string.ascii_letters + string.digits + "._%+-@"
    reach = 64 + 1 + 253 + 2
    _default_shape = MaskShape(1, 0)
    _domain = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}")

    def find(self, text: str) -> list[PiiHit]:
        return [hit for m in re.finditer("@", text) if (hit := self._at(text, m.start()))]

    def _at(self, text: str, at: int) -> PiiHit | None:
        start = at
        while start > 0 and text[start - 1] in _LOCAL_CHARS and at - start <= 64:
            start -= 1
        local = text[start:at]
        if not local or len(local) > 64 or local[0] == "." or local[-1] == "." or ".." in local:
            return None
        if start > 0 and (text[start - 1] in _LOCAL_CHARS or text[start - 1] == "@"):
            return None
        domain = self._domain.match(text, at + 1)
        if domain is None or domain.end() - at - 1 > 253:
            return None
        end = domain.end()
        after, further = text[end : end + 1], text[end + 1 : end + 2]
        if (
            ascii_alnum(after)
            or after in ("-", "_", "@")
            or (after == "." and ascii_alnum(further))
        ):
            return None
        return PiiHit(start, end, self.name, text[start:end])

    def mask(self, value: str) -> str:
        local, at, domain = value.partition("@")
        return mask_chars(local, self.shape, lambda ch: True) + at + domain


class Ipv4Recognizer(RecognizerBase):
    """Dotted IPv4 addresses with valid octets, not part of a longer dotted number."""

    name = "ipv4"
    required = ANY_DIGIT
    hold_chars = string.digits + "."
    reach = 18
    # Found from the first dot (a literal is found much faster than a digit class); the first
    # octet is read backwards from it.
    _pattern = re.compile(r"\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")

    def find(self, text: str) -> list[PiiHit]:
        return self._scan(text, partial(self._pattern.search, text), self._accept)

    @staticmethod
    def _accept(text: str, dot: int, end: int) -> int | None:
        start = dot
        while start > 0 and text[start - 1] in DIGITS and dot - start < 4:
            start -= 1
        octets = text[start:end].split(".")
        if start == dot or any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in octets):
            return None
        before = text[start - 1] if start else ""
        after, further = text[end : end + 1], text[end + 1 : end + 2]
        if (
            ascii_alnum(before)
            or before in (".", ":")
            or ascii_alnum(after)
            or (after == "." and further in DIGITS)
        ):
            return None
        return start

    def mask(self, value: str) -> str:
        if self.shape != self._default_shape:
            return mask_chars(value, self.shape, str.isdigit)
        head, _, last = value.rpartition(".")
        return f"{head}.{self.shape.char * len(last)}"


class Ipv6Recognizer(RecognizerBase):
    """IPv6 addresses (validated by ``ipaddress``), found from their colons."""

    name = "ipv6"
    required = re.compile(":")
    hold_chars = string.hexdigits + ":."
    reach = 48
    _run = re.compile(r"[0-9A-Fa-f:.]{1,46}")

    def find(self, text: str) -> list[PiiHit]:
        hits: list[PiiHit] = []
        covered = 0
        colon = text.find(":")
        while colon != -1:
            # The first colon of an address has another within five characters.
            if colon >= covered and text.find(":", colon + 1, colon + 6) != -1:
                start = colon
                while start > 0 and text[start - 1] in _HEX_RUN_CHARS and colon - start < 46:
                    start -= 1
                run = self._run.match(text, start)
                covered = run.end() if run else start
                hits.extend(self._check(text, start, covered))
            colon = text.find(":", max(colon + 1, covered))
        return hits

    def _check(self, text: str, start: int, end: int) -> list[PiiHit]:
        before, after = text[max(start - 1, 0) : start], text[end : end + 1]
        if end - start > 45 or (after and (after in _HEX_RUN_CHARS or ascii_alnum(after))):
            return []
        if before and (ascii_alnum(before) or before in _HEX_RUN_CHARS):
            return []
        core = text[start:end].rstrip(".")
        hex_digits = sum(ch in string.hexdigits for ch in core)
        if core.count(":") < 2 or (hex_digits < 3 and core != "::1"):
            return []
        try:
            ipaddress.IPv6Address(core)
        except ValueError:
            return []
        return [PiiHit(start, start + len(core), self.name, core)]

    def mask(self, value: str) -> str:
        if self.shape != self._default_shape:
            return mask_chars(value, self.shape, lambda ch: ch in string.hexdigits)
        cut = max(value.rfind(":"), value.rfind("."))
        return value[: cut + 1] + self.shape.char * (len(value) - cut - 1)


class RegexRecognizer(RecognizerBase):
    """A custom pattern from a policy document; matches longer than ``max_length`` are dropped.

    Streaming is exact when matches and their lookarounds span at most ``max_length``
    characters and a candidate that fails never hides another (delimit the pattern with
    ``\\b`` or lookarounds); a stream holds back ``2 * max_length + 2`` characters for it.
    """

    def __init__(
        self, name: str, pattern: str, mask_shape: MaskShape | None = None, max_length: int = 32
    ) -> None:
        super().__init__(mask_shape or MaskShape(0, 0))
        try:
            self._pattern = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"PII pattern {name!r} does not compile: {error}") from None
        self.name = name
        self.max_length = self.lookbehind = max_length
        self.reach = 2 * max_length + 2  # the match, then lookarounds as long again

    def find(self, text: str) -> list[PiiHit]:
        return [
            PiiHit(m.start(), m.end(), self.name, m.group())
            for m in self._pattern.finditer(text)
            if 0 < m.end() - m.start() <= self.max_length
        ]


def default_recognizers(max_year: int | None = None) -> dict[str, Recognizer]:
    """The built-in recognisers by name, in ``PRIORITY`` order."""
    recognizers: list[Recognizer] = [
        IdCardRecognizer(max_year=max_year),
        BankCardRecognizer(max_year=max_year),
        MobileRecognizer(),
        EmailRecognizer(),
        Ipv6Recognizer(),
        Ipv4Recognizer(),
    ]
    return {r.name: r for r in recognizers}


def find_pii(text: str, recognizers: Iterable[Recognizer]) -> list[PiiHit]:
    """Hits of all recognisers without overlaps: longer first, then ``PRIORITY`` order."""
    rank = {name: i for i, name in enumerate(PRIORITY)}
    candidates = [hit for recognizer in recognizers for hit in recognizer.find(text)]
    candidates.sort(key=lambda h: (h.start - h.end, rank.get(h.kind, len(rank)), h.start))
    kept: list[PiiHit] = []
    for hit in candidates:
        if all(hit.end <= other.start or other.end <= hit.start for other in kept):
            kept.append(hit)
    return sorted(kept, key=lambda h: h.start)
