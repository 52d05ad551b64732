"""Recognisers for personal data, Chinese first: phones, 身份证, bank cards, e-mail, IP addresses.

Each recogniser finds candidates with a search that starts on a literal (a dot, ``@``, a colon,
``1``, or a run of zeros in the *digit shape* of the text), so the C search skips most text,
then checks them in Python: checksums (ISO 7064 MOD 11-2 for 身份证, Luhn for cards), calendar
dates, province and issuer prefixes, boundaries. Validators never raise on odd input.

Boundaries: a number never counts inside a longer one. A digit candidate must not touch an
ASCII letter or digit, nor a digit behind one joiner (`` -./,``): ``12 13812345678`` and
``13812345678-9`` hold no phone. So two accepted candidates of one recogniser never overlap
and every decision is local (two characters either side), which streaming relies on.

Overlaps between recognisers: the more specific wins. An 18-digit card candidate with a 身份证
region and birth date is not a card even when its check digit is wrong (id_card >
bank_card); a phone cannot sit inside a card or an ID (boundaries); ``find_pii`` resolves the
rest (longer first, then ``PRIORITY`` order).
"""

from __future__ import annotations

import datetime
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

PRIORITY = ("id_card", "bank_card", "mobile", "email", "ipv6", "ipv4")
DIGITS = frozenset(string.digits)
_JOINERS = frozenset(" -./,")
ANY_DIGIT = re.compile(r"[0-9]")
_DIGITISH = string.digits + " -./,+Xx"  # what digit candidates and their boundaries are made of
_PROVINCES = frozenset(
    {
        *range(11, 16),
        *range(21, 24),
        *range(31, 38),
        *range(41, 47),
        *range(50, 55),
        *range(61, 66),
        71,
        81,
        82,
        83,
        91,
    }
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
# Digit shape: one byte per character (latin-1, "?" for the rest), digits as "0", X/x as "X",
# group separators kept, the rest "#". A literal run of zeros is found about four times faster
# than a character class in the string.
_SHAPE_TABLE = bytes(
    48 if 48 <= b <= 57 else 88 if b in b"Xx" else b if b in b" -" else 35 for b in range(256)
)


@dataclass(frozen=True, slots=True)
class MaskShape:
    """How much of a value a mask keeps: ``keep_start`` and ``keep_end`` significant characters.

    At least one significant character is always masked, whatever the shape asks.
    """

    keep_start: int
    keep_end: int
    char: str = "*"

    def __post_init__(self) -> None:
        if self.keep_start < 0 or self.keep_end < 0 or len(self.char) != 1:
            raise ValueError("a mask shape keeps >= 0 characters and masks with one character")


@dataclass(frozen=True, slots=True)
class PiiHit:
    """A recognised value: ``text[start:end] == value``."""

    start: int
    end: int
    kind: str
    value: str


class Recognizer(Protocol):
    """Finds one kind of personal data and masks it.

    What streaming needs to know: a hit starting at ``i`` is decided by ``text[i - lookbehind
    : i + reach]``; when ``hold_chars`` is not empty, a hit and the characters that decide it
    after its start are all ``hold_chars``, so hits before the text's last run of them are
    final.
    """

    @property
    def name(self) -> str: ...

    @property
    def reach(self) -> int: ...

    @property
    def lookbehind(self) -> int: ...

    @property
    def hold_chars(self) -> str: ...

    def find(self, text: str) -> list[PiiHit]: ...

    def mask(self, value: str) -> str: ...


def ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _isolated(text: str, start: int, end: int) -> bool:
    """Whether a digit candidate is not part of a longer number or word."""
    sides = (
        (text[start - 1] if start else "", text[start - 2] if start > 1 else ""),
        (text[end : end + 1], text[end + 1 : end + 2]),
    )  # (next to it, one further)
    return not any(ascii_alnum(near) or (near in _JOINERS and far in DIGITS) for near, far in sides)


def mask_chars(
    value: str, shape: MaskShape, significant: Callable[[str], bool], skip: int = 0
) -> str:
    positions = [i for i in range(skip, len(value)) if significant(value[i])]
    count = len(positions)
    keep_start = min(shape.keep_start, max(count - 1, 0))
    keep_end = min(shape.keep_end, max(count - 1 - keep_start, 0))
    chars = list(value)
    for i in positions[keep_start : count - keep_end]:
        chars[i] = shape.char
    return "".join(chars)


def digit_shape(text: str) -> bytes:
    """One byte per character of ``text``: ``0`` for a digit, ``X``, space, ``-`` or ``#``."""
    return text.encode("latin-1", "replace").translate(_SHAPE_TABLE)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        value = (ord(ch) - 48) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _looks_like_id_card(digits: str, max_year: int) -> bool:
    """18 characters with a valid region and birth date (the check digit not checked)."""
    if len(digits) != 18 or not digits[:17].isascii() or not digits[:17].isdigit():
        return False
    try:
        birth = datetime.date(int(digits[6:10]), int(digits[10:12]), int(digits[12:14]))
    except ValueError:
        return False
    return int(digits[:2]) in _PROVINCES and 1900 <= birth.year <= max_year


def is_valid_id_card(digits: str, max_year: int) -> bool:
    """Whether 18 characters are a plausible 身份证 number (region, birth date, check digit)."""
    if not _looks_like_id_card(digits, max_year):
        return False
    total = sum(int(d) * w for d, w in zip(digits, _ID_WEIGHTS, strict=False))
    return "10X98765432"[total % 11] == digits[17].upper()


def _plausible_issuer(digits: str) -> bool:
    """A known issuer prefix, with a length that issuer uses."""
    length, two, three, four = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":  # Visa
        return length in (16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return length == 16
    return (
        two in (62, 65, 36, 38)
        or 3528 <= four <= 3589
        or four == 6011  # UnionPay, JCB,
        or 644 <= three <= 649
        or 300 <= three <= 305
    )  # Discover, Diners


class RecognizerBase:
    """What the built-in recognisers share; they look two characters behind a hit."""

    name = ""
    hold_chars = ""
    # A character every match contains: text without one is skipped by a single C search.
    required: re.Pattern[str] | None = None
    reach = 0
    lookbehind = 2
    _default_shape = MaskShape(0, 0)

    def __init__(self, shape: MaskShape | None = None) -> None:
        self.shape = shape or self._default_shape

    def find(self, text: str) -> list[PiiHit]:
        raise NotImplementedError

    def mask(self, value: str) -> str:
        return mask_chars(value, self.shape, ascii_alnum)

    def _scan(
        self,
        text: str,
        search: Callable[[int], re.Match[Any] | None],
        accept: Callable[[str, int, int], int | None],
    ) -> list[PiiHit]:
        """Candidates from ``search(pos)`` (in the text or in its digit shape, which has the
        same indexes); ``accept`` gives the hit's start in ``text``, or None to reject."""
        hits: list[PiiHit] = []
        pos = 0
        while (match := search(pos)) is not None:
            start, end = match.span()
            begin = accept(text, start, end)
            if begin is None:
                pos = start + 1  # a rejected candidate must not hide one that starts inside it
            else:
                hits.append(PiiHit(begin, end, self.name, text[begin:end]))
                pos = end
        return hits


class MobileRecognizer(RecognizerBase):
    """Mainland mobile numbers: ``13812345678``, ``138 1234 5678``, ``+86 138-1234-5678``."""

    name = "mobile"
    hold_chars = _DIGITISH
    required = ANY_DIGIT
    reach = 22
    _default_shape = MaskShape(3, 4)
    _pattern = re.compile(r"1[3-9][0-9](?P<sep>[ -]?)[0-9]{4}(?P=sep)[0-9]{4}")
    _prefix = re.compile(r"(?:\+86|0086)[ -]?")

    def find(self, text: str) -> list[PiiHit]:
        return self._scan(text, partial(self._pattern.search, text), self._accept)

    def _accept(self, text: str, start: int, end: int) -> int | None:
        before = max(0, start - 5)
        prefix = next(
            (m for m in self._prefix.finditer(text, before, start) if m.end() == start), None
        )
        begin = prefix.start() if prefix else start
        return begin if _isolated(text, begin, end) else None

    def mask(self, value: str) -> str:
        prefix = self._prefix.match(value)
        return mask_chars(value, self.shape, str.isdigit, prefix.end() if prefix else 0)


class _ShapeBased(RecognizerBase):
    """Searches the digit shape; birth years count up to ``max_year`` (this year unless given)."""

    hold_chars = _DIGITISH
    required = ANY_DIGIT
    _default_shape = MaskShape(6, 4)
    _shape: re.Pattern[bytes]
    _accept: Callable[[str, int, int], int | None]

    def __init__(self, shape: MaskShape | None = None, max_year: int | None = None) -> None:
        super().__init__(shape)
        self.max_year = max_year if max_year is not None else datetime.date.today().year

    def find(self, text: str) -> list[PiiHit]:
        return self._scan(text, partial(self._shape.search, digit_shape(text)), self._accept)

    def mask(self, value: str) -> str:
        return mask_chars(value, self.shape, lambda ch: ch.isdigit() or ch in "Xx")


class IdCardRecognizer(_ShapeBased):
    """18-character 身份证 numbers, compact or grouped 6-8-4 / 6-4-4-4."""

    name = "id_card"
    reach = 24
    _shape = re.compile(rb"000000(?P<s>[ -]?)0000(?:(?P=s)0000(?P=s)|0000(?P=s))000[0X]")

    def _accept(self, text: str, start: int, end: int) -> int | None:
        digits = text[start:end].replace(" ", "").replace("-", "")
        ok = is_valid_id_card(digits, self.max_year) and _isolated(text, start, end)
        return start if ok else None


class BankCardRecognizer(_ShapeBased):
    """16-19 digit card numbers (compact or in groups of four), Luhn-valid, known issuers."""

    name = "bank_card"
    reach = 26
    _shape = re.compile(rb"0000(?P<s>[ -]?)0000(?P=s)0000(?P=s)0000(?:(?P=s)0{1,3})?")

    def _accept(self, text: str, start: int, end: int) -> int | None:
        digits = text[start:end].replace(" ", "").replace("-", "")
        if not (luhn_valid(digits) and _plausible_issuer(digits)):
            return None
        if _looks_like_id_card(digits, self.max_year):
            return None  # 身份证-shaped numbers are IDs (or mistyped IDs), never cards
        return start if _isolated(text, start, end) else None
