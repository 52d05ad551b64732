"""Keyword libraries matched with one multi-pattern automaton over normalised text.

An entry is a word (``赌博``, ``meth``) or a combination of parts: ``A&B`` hits where both
parts occur with their starts at most ``window`` normalised characters apart, ``A~C`` hits
``A`` where no ``C`` starts within ``window`` normalised characters of it, and the two mix
(``A&B~C``). A combination reports one ``WordHit`` per part occurrence that satisfies it, so a
mask covers the words and not the innocent text between them.

Matching: patterns and text are normalised alike (see ``normalize``), the automaton reports
every occurrence, overlapping ones included (``MATCHKIND_STANDARD``), so that no entry hides
another one (a longer word of a category a detector ignores, or one that fails the boundary
rule). A side of a pattern that is an ASCII letter or digit only matches where the original
character next to it is not one (``class`` does not hit ``ass``; ``ＢＡＤ`` and ``b a d.`` hit
``bad``); CJK sides have no boundary rule.

Invariant: ``find`` is local. A hit is decided by the text from one character (plus
``window`` normalised characters for combinations) before it to one character after it;
``scan_stream`` and ``context_start`` say how much of a growing text is decided and how much
context a scan needs, which is what streaming relies on.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import ahocorasick_rs

from openautoglm.policy.folding import fold_char, may_compose, segment_start
from openautoglm.policy.normalize import Normalized, normalize

DEFAULT_CATEGORY = "default"
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))  # UTF-8 bytes that do not start a character
_CATEGORY_HEADER = re.compile(r"#\s*category\s*:(.*)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class WordEntry:
    """One library entry: a word or a combination (``A&B``, ``A~C``) and its category."""

    text: str
    category: str = DEFAULT_CATEGORY


@dataclass(frozen=True, slots=True)
class WordHit:
    """Where an entry matched, in original text coordinates (``text[start:end]``)."""

    start: int
    end: int
    entry: WordEntry


@dataclass(frozen=True, slots=True)
class _Rule:
    entry: WordEntry
    order: int
    required: tuple[int, ...]  # pattern ids
    excluded: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Occurrence:
    pattern: int
    norm_start: int  # in normalised characters; only computed when there are combinations
    start: int
    end: int


def parse_entry(text: str) -> tuple[list[str], list[str]]:
    """Split an entry into its required and excluded parts, each normalised.

    Raises ValueError when a part is empty once normalised.
    """
    head, *excluded = text.split("~")
    required = head.split("&")
    out: tuple[list[str], list[str]] = ([], [])
    for parts, normalised in ((required, out[0]), (excluded, out[1])):
        for part in parts:
            pattern = normalize(part).text
            if not pattern:
                raise ValueError(f"entry {text!r}: part {part!r} is empty once normalised")
            normalised.append(pattern)
    return out


def _char_offsets(utf8: bytes, byte_offsets: list[int]) -> dict[int, int]:
    """Character offsets of byte offsets (at character starts) of ``utf8``."""
    out: dict[int, int] = {}
    chars = previous = 0
    for offset in sorted(set(byte_offsets)):
        chars += len(utf8[previous:offset].translate(None, _CONTINUATION_BYTES))
        previous = offset
        out[offset] = chars
    return out


@functools.lru_cache(maxsize=4096)
def _is_word_char(ch: str, at_end: bool) -> bool:
    """Whether ``ch`` next to an ASCII pattern side continues an ASCII word."""
    if ch.isascii():
        return ch.isalnum()
    folded = fold_char(ch)
    if not folded:
        return False
    side = folded[-1] if at_end else folded[0]
    return side.isascii() and side.isalnum()


class WordMatcher:
    """Finds library entries in texts; build once, share freely (it holds no per-text state)."""

    def __init__(self, entries: Iterable[WordEntry], window: int = 32) -> None:
        if window < 0:
            raise ValueError("window must not be negative")
        self.window = window
        ids: dict[str, int] = {}
        rules: list[_Rule] = []
        for entry in dict.fromkeys(entries):
            required, excluded = parse_entry(entry.text)
            rules.append(
                _Rule(
                    entry,
                    len(rules),
                    tuple(ids.setdefault(p, len(ids)) for p in required),
                    tuple(ids.setdefault(p, len(ids)) for p in excluded),
                )
            )
        self._patterns = list(ids)
        self._rules = rules
        self._plain: list[list[_Rule]] = [[] for _ in ids]
        self._combos: list[list[_Rule]] = [[] for _ in ids]
        for rule in rules:
            if len(rule.required) == 1 and not rule.excluded:
                self._plain[rule.required[0]].append(rule)
            else:
                for pid in dict.fromkeys(rule.required + rule.excluded):
                    self._combos[pid].append(rule)
        ascii_side = [
            (p[0].isascii() and p[0].isalnum(), p[-1].isascii() and p[-1].isalnum())
            for p in self._patterns
        ]
        self._left_rule = [left for left, _ in ascii_side]
        self._right_rule = [right for _, right in ascii_side]
        longest_part = max(map(len, self._patterns), default=0)
        has_combos = any(self._combos)
        self._combo_reach = window + longest_part if has_combos else 0
        self.longest = max(
            [len(self._patterns[r.required[0]]) for r in rules if not self._is_combo(r)]
            + ([self._combo_reach] if has_combos else []),
            default=0,
        )
        self._prefixes = {p[:k] for p in self._patterns for k in range(1, len(p) + 1)}
        # For the hold-back: the longest pattern prefix that can end with a given character.
        self._prefix_len_by_last: dict[str, int] = {}
        for p in self._patterns:
            for k, ch in enumerate(p, 1):
                if self._prefix_len_by_last.get(ch, 0) < k:
                    self._prefix_len_by_last[ch] = k
        # Bytes in, bytes out: the normalised text is UTF-8 already, and a fresh str would be
        # encoded again inside the automaton.
        self._automaton = (
            ahocorasick_rs.BytesAhoCorasick(
                [p.encode() for p in self._patterns],
                matchkind=ahocorasick_rs.MATCHKIND_STANDARD,
                implementation=ahocorasick_rs.Implementation.ContiguousNFA,
            )
            if self._patterns
            else None
        )

    @staticmethod
    def _is_combo(rule: _Rule) -> bool:
        return len(rule.required) > 1 or bool(rule.excluded)

    @property
    def entries(self) -> list[WordEntry]:
        """The distinct entries, in the order given."""
        return [rule.entry for rule in self._rules]

    def find(self, text: str) -> list[WordHit]:
        """Every entry hit in ``text``, sorted by start, then end, then entry order."""
        return self._hits(self._occurrences(normalize(text)))

    def _hits(self, occurrences: list[_Occurrence]) -> list[WordHit]:
        hits: list[tuple[int, int, int, WordEntry]] = []
        touched: dict[int, _Rule] = {}
        for occ in occurrences:
            for rule in self._plain[occ.pattern]:
                hits.append((occ.start, occ.end, rule.order, rule.entry))
            for rule in self._combos[occ.pattern]:
                touched[rule.order] = rule
        if touched:
            hits.extend(self._combination_hits(touched.values(), occurrences))
        hits.sort(key=lambda h: h[:3])
        return [WordHit(start, end, entry) for start, end, _, entry in hits]

    def _occurrences(self, norm: Normalized) -> list[_Occurrence]:
        if self._automaton is None or not norm.utf8:
            return []
        source = norm.source
        size = len(source)
        out: list[_Occurrence] = []
        matches = self._automaton.find_matches_as_indexes(norm.utf8, overlapping=True)
        if not matches:
            return out
        spans = norm.origin_spans_utf8([(b_start, b_end) for _, b_start, b_end in matches])
        char_starts = (
            _char_offsets(norm.utf8, [b_start for _, b_start, _ in matches])
            if self._combo_reach
            else {}
        )
        for (pid, b_start, _), (start, end) in zip(matches, spans, strict=True):
            if self._left_rule[pid] and start > 0 and _is_word_char(source[start - 1], True):
                continue
            if self._right_rule[pid] and end < size and _is_word_char(source[end], False):
                continue
            out.append(_Occurrence(pid, char_starts.get(b_start, -1), start, end))
        return out

    def _combination_hits(
        self, rules: Iterable[_Rule], occurrences: list[_Occurrence]
    ) -> list[tuple[int, int, int, WordEntry]]:
        by_pattern: dict[int, list[_Occurrence]] = {}
        for occ in occurrences:
            by_pattern.setdefault(occ.pattern, []).append(occ)
        for found in by_pattern.values():
            found.sort(key=lambda o: o.norm_start)
        starts = {pid: [o.norm_start for o in found] for pid, found in by_pattern.items()}
        window = self.window
        hits: dict[tuple[int, int, int], WordEntry] = {}
        for rule in rules:
            for index, pid in enumerate(rule.required):
                for occ in by_pattern.get(pid, ()):
                    if self._satisfies(rule, index, occ, starts, window):
                        hits[(occ.start, occ.end, rule.order)] = rule.entry
        return [(s, e, order, entry) for (s, e, order), entry in hits.items()]

    @staticmethod
    def _satisfies(
        rule: _Rule, index: int, occ: _Occurrence, starts: dict[int, list[int]], window: int
    ) -> bool:
        low, high = occ.norm_start - window, occ.norm_start + window
        for other_index, pid in enumerate(rule.required):
            if other_index == index:
                continue
            found = starts.get(pid, [])
            i = bisect.bisect_left(found, low)
            # The same word twice (A&A) needs two different occurrences.
            while (
                i < len(found)
                and found[i] <= high
                and (pid == rule.required[index] and found[i] == occ.norm_start)
            ):
                i += 1
            if i == len(found) or found[i] > high:
                return False
        for pid in rule.excluded:
            found = starts.get(pid, [])
            i = bisect.bisect_left(found, low)
            if i < len(found) and found[i] <= high:
                return False
        return True

    # -- streaming support -------------------------------------------------------------

    def scan_stream(self, text: str, start: int) -> tuple[int, list[WordHit]]:
        """For a text that may still grow: ``(stable, hits)``.

        Every hit of ``text`` starting before ``stable`` is final, whatever text follows;
        ``hits`` are those starting in ``[start, stable)``. ``text`` must start where
        ``context_start`` says. Held back: the last segment (a combining mark may still join
        it), the shortest tail whose normalised form could still grow into a pattern (or is a
        whole pattern whose right boundary is not known yet), and combination parts that may
        still find a partner or an exclusion within ``window``.
        """
        size = len(text)
        if size == 0:
            return 0, []
        stable = segment_start(text, size - 1)
        norm = normalize(text)
        normalised = norm.text
        if not normalised or self._automaton is None:
            return stable, []
        # Pending prefixes are looked for at the end of the normalised text, or before the last
        # segment's output when that may still change (a mark can compose with its base) or
        # holds more than one character (a word ending inside it has no right neighbour yet).
        last = fold_char(text[stable]) if stable == size - 1 else normalize(text[stable:]).text
        head = len(normalised)
        if len(last) > 1 or may_compose(text[stable]):
            head -= len(last)
        longest = min(self._prefix_len_by_last.get(normalised[head - 1], 0), head) if head else 0
        for k in range(longest, 0, -1):
            prefix = normalised[head - k : head]
            if prefix in self._prefixes:
                at = len(norm.utf8) - len(normalised[head - k :].encode())
                stable = min(stable, norm.origin_start_utf8(at))
                break
        if stable <= start and not self._combo_reach:
            return stable, []
        occurrences = self._occurrences(norm)
        if self._combo_reach:
            horizon = head - self._combo_reach
            for occ in occurrences:
                if occ.norm_start >= horizon and self._combos[occ.pattern]:
                    stable = min(stable, occ.start)
        if stable <= start:
            return stable, []
        return stable, [hit for hit in self._hits(occurrences) if start <= hit.start < stable]

    def context_start(self, text: str, pos: int) -> int:
        """Where a text must start so that hits starting at or after ``pos`` are found alike."""
        if pos <= 0:
            return 0
        start = pos - 1  # the character before a hit decides its ASCII boundary
        if self.window and self._combo_reach:
            tail, offset = self._tail(text[:pos], self.window)
            normalised = tail.text
            if len(normalised) > self.window:
                start = offset + tail.origin_start(len(normalised) - self.window) - 1
            else:
                start = offset - 1
        return segment_start(text, max(start, 0))

    def _tail(self, text: str, need: int) -> tuple[Normalized, int]:
        """The normalised form of a tail of ``text`` with at least ``need`` characters."""
        size = len(text)
        span = 2 * need + 8
        while True:
            offset = segment_start(text, max(size - span, 0)) if size else 0
            tail = normalize(text[offset:])
            if len(tail.text) >= need or offset == 0:
                return tail, offset
            span *= 4


def load_library(path: str | Path) -> list[WordEntry]:
    """Read a keyword library: UTF-8, one ``word`` or ``word<TAB>category`` per line.

    ``# category: name`` sets the category of the lines after it; other ``#`` lines are
    comments; blank lines are ignored. Raises ValueError naming the line of a bad entry.
    """
    entries: list[WordEntry] = []
    category = DEFAULT_CATEGORY
    with open(path, encoding="utf-8-sig") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.rstrip("\r\n")
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                header = _CATEGORY_HEADER.match(stripped)
                if header:
                    category = header.group(1).strip()
                    if not category:
                        raise ValueError(f"{path}:{number}: empty category name")
                continue
            word, _, named = line.partition("\t")
            word = word.strip()
            try:
                parse_entry(word)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from None
            entries.append(WordEntry(word, named.strip() or category))
    return entries
