"""What single characters and segments become under normalisation, and the tables behind it.

The rules (see ``normalize``): NFKC, case folding, and the removal of separators, punctuation,
symbols, invisible and combining characters, decided per *segment* (a character and the
attaching characters after it). ``char_tables()`` precomputes, once per process (~0.2 s), the
character classes the fast C passes of ``normalize`` use.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

_DELETED_CATEGORIES = frozenset(
    {
        "Zs",
        "Zl",
        "Zp",
        "Cc",
        "Cf",
        "Pc",
        "Pd",
        "Ps",
        "Pe",
        "Pi",
        "Pf",
        "Po",
        "Sm",
        "Sc",
        "Sk",
        "So",
        "Me",
    }
)
_INVISIBLE_LETTERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
# Blocks without properties worth computing (ideographs, syllables, private use): skipped
# when the tables are built; tests check that nothing in them would change.
_PLAIN_BLOCKS = (
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0xD800, 0xF8FF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2EBEF),
    (0x30000, 0x323AF),
)
_SCANNED_RANGES = ((0x0000, 0x3FFFF), (0xE0000, 0xEFFFF))


def _is_deleted(ch: str) -> bool:
    """Whether a character of NFKC-and-casefolded text is a separator to drop."""
    cp = ord(ch)
    if 0x2E80 <= cp <= 0x2FDF:
        return False
    if 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF or ch in _INVISIBLE_LETTERS:
        return True
    category = unicodedata.category(ch)
    if category == "Mn":
        return unicodedata.combining(ch) != 0
    return category in _DELETED_CATEGORIES


@functools.lru_cache(maxsize=8192)
def fold_segment(segment: str) -> str:
    folded = unicodedata.normalize("NFKC", segment).casefold()
    return "".join(ch for ch in folded if not _is_deleted(ch))


def _fold_char(ch: str) -> str:
    if ch.casefold() == ch and unicodedata.is_normalized("NFKC", ch):
        return "" if _is_deleted(ch) else ch
    return fold_segment(ch)


def _codepoints() -> list[int]:
    out: list[int] = []
    for low, high in _SCANNED_RANGES:
        start = low
        for block_low, block_high in _PLAIN_BLOCKS:
            if low <= block_low <= high:
                out.extend(range(start, block_low))
                start = block_high + 1
        out.extend(range(start, high + 1))
    return out


def _char_class(codepoints: list[int], astral: bool = False) -> str:
    parts: list[str] = []
    codepoints = sorted(codepoints)
    i = 0
    while i < len(codepoints):
        j = i
        while j + 1 < len(codepoints) and codepoints[j + 1] == codepoints[j] + 1:
            j += 1
        low, high = chr(codepoints[i]), chr(codepoints[j])
        parts.append(re.escape(low) if i == j else f"{re.escape(low)}-{re.escape(high)}")
        i = j + 1
    if astral:
        parts.append("\U00010000-\U0010ffff")
    return "[" + "".join(parts) + "]" if parts else "[^\\s\\S]"


@dataclass(frozen=True, slots=True)
class _Tables:
    ascii_table: bytes  # bytes.translate table: ASCII separators -> NUL, A-Z -> a-z
    attaching: frozenset[str]
    composers: frozenset[str]  # characters that compose with an attaching character after them
    separators: re.Pattern[str]  # non-ASCII separators of the BMP
    exotic: re.Pattern[str]  # BMP characters that fold to something else, or attach
    exotic_or_astral: re.Pattern[str]  # the same, plus every astral character
    astral: re.Pattern[str]


@functools.cache
def char_tables() -> _Tables:
    codepoints = _codepoints()
    # Hangul vowels and trailing consonants compose with the jamo or syllable before them.
    secondaries = {chr(cp) for cp in (*range(0x1161, 0x1176), *range(0x11A8, 0x11C3))}
    composers = {chr(cp) for cp in (*range(0x1100, 0x1113), *range(0xAC00, 0xD7A4, 28))}
    for cp in codepoints:
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            composers.add(chr(int(parts[0], 16)))
            if unicodedata.combining(second := chr(int(parts[1], 16))) == 0:
                secondaries.add(second)
    attaching: set[str] = set()
    seps: list[int] = []
    exotic: list[int] = []
    for cp in codepoints:
        ch = chr(cp)
        first = unicodedata.normalize("NFKD", ch)[0]
        if unicodedata.combining(ch) or ch in secondaries or unicodedata.combining(first):
            attaching.add(ch)
            exotic.append(cp)
            continue
        if cp < 0x80:
            continue
        folded = _fold_char(ch)
        if folded == "":
            seps.append(cp)
        elif folded != ch:
            exotic.append(cp)
    table = bytearray(range(256))
    for cp in range(0x80):
        if _fold_char(chr(cp)) == "":
            table[cp] = 0
        elif 0x41 <= cp <= 0x5A:
            table[cp] = cp + 0x20
    bmp_exotic = [cp for cp in exotic if cp <= 0xFFFF]
    return _Tables(
        ascii_table=bytes(table),
        attaching=frozenset(attaching),
        composers=frozenset(composers),
        separators=re.compile(_char_class([cp for cp in seps if cp <= 0xFFFF])),
        exotic=re.compile(_char_class(bmp_exotic)),
        exotic_or_astral=re.compile(_char_class(bmp_exotic, astral=True)),
        astral=re.compile("[\U00010000-\U0010ffff]"),
    )


def is_attaching(ch: str) -> bool:
    """Whether ``ch`` can merge with the character before it (combining marks and the like).

    A streamed or windowed text may only be cut before a character that is not attaching.
    """
    return ch in char_tables().attaching


def may_compose(ch: str) -> bool:
    """Whether attaching characters after ``ch`` can merge with it into another character."""
    return ch in char_tables().composers


def segment_start(text: str, index: int) -> int:
    """The start of the segment that holds ``text[index]`` (a safe place to cut the text)."""
    attaching = char_tables().attaching
    while index > 0 and text[index] in attaching:
        index -= 1
    return index


def fold_char(ch: str) -> str:
    """What one character normalises to on its own (``""`` for a separator)."""
    return _fold_char(ch)
