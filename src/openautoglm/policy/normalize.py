"""Text normalisation for keyword matching, with a map back to the original text.

``normalize(text).text`` is what keyword patterns are matched against: NFKC (full-width to
half-width, ligatures and compatibility characters unfolded), case folding, and the removal of
everything people put between letters to dodge a filter: whitespace and control characters,
punctuation and symbols (Unicode categories Z*, Cc, Cf, P*, S*), enclosing and non-spacing
combining marks, variation selectors and invisible fillers. So ``敏 感 词``, ``敏*感*词``,
``敏\\u200b感词`` and ``ＢＡＤ`` become ``敏感词`` and ``bad``.

Kept on purpose: letters, digits and marks that are letters' parts in Indic and Thai scripts
(spacing marks, non-spacing marks of combining class 0), and the CJK radical symbols
(U+2E80-U+2FDF), which stand in for ideographs.

Invariant (the locality that streaming relies on): the text is cut into *segments*, a character
that is not an attaching character (see ``is_attaching``) plus the attaching characters after
it, and every segment is normalised on its own. So ``normalize(a + b).text ==
normalize(a).text + normalize(b).text`` whenever ``b`` does not start with an attaching
character. ``normalize_pattern`` uses the same function, so patterns and texts always agree.

Speed: almost every character is ASCII, a separator, or left as it is; those go through
C-implemented passes (a character-class ``re.sub`` marking separators, ``bytes.translate``
for ASCII); only characters that change under NFKC or case folding, and segments with
combining marks, go through Python. The map back to the original is computed per query, from
counts over the marked bytes (one sweep for a batch of spans).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from openautoglm.policy.folding import char_tables, fold_segment

_MARK = "\0"  # stands for a removed separator in the marked text; NUL is a separator itself
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))
_SHORT = 4096  # texts shorter than this are checked for astral characters with a regex


@dataclass(frozen=True, slots=True)
class _Anchor:
    """An exotic segment: ``marked[marked_start:marked_end]`` came from ``source[start:end]``."""

    marked_start: int
    marked_end: int
    start: int
    end: int


class Normalized:
    """A normalised text and the way back to the text it came from.

    ``text`` is the normalised text (``utf8`` its UTF-8 encoding); ``origin_span(start,
    end)`` maps a span of it to the span of ``source`` it came from: from the first source
    character that produced ``text[start]`` to the end of the one that produced
    ``text[end - 1]``. Treat it as immutable: it is a plain slotted class only because a
    frozen dataclass costs more to build than normalising a short streamed chunk does.
    """

    __slots__ = ("_anchors", "_marked", "_text", "source", "utf8")

    def __init__(self, source: str, marked: bytes, anchors: tuple[_Anchor, ...]) -> None:
        self.source = source
        self.utf8 = marked.translate(None, b"\0")
        self._marked = marked  # UTF-8 of the folded text, each separator a NUL byte
        self._anchors = anchors
        self._text: str | None = None

    @property
    def text(self) -> str:
        """The normalised text."""
        if self._text is None:
            self._text = self.utf8.decode()
        return self._text

    def __repr__(self) -> str:
        return f"Normalized(text={self.text!r}, source={self.source!r})"

    def origin_span(self, start: int, end: int) -> tuple[int, int]:
        """The ``[start, end)`` span of ``source`` that ``text[start:end]`` came from."""
        return self.origin_spans([(start, end)])[0]

    def origin_start(self, index: int) -> int:
        """Where in ``source`` the character ``text[index]`` came from."""
        return self.origin_spans([(index, index + 1)])[0][0]

    def origin_spans(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """``origin_span`` of many spans of ``text`` at once (one sweep, any order)."""
        text = self.text
        if len(text) == len(self.utf8):  # ASCII: characters and bytes coincide
            return self.origin_spans_utf8(spans)
        offsets = sorted({i for span in spans for i in span if 0 <= i <= len(text)})
        to_byte = {}
        position = count = 0
        for index in offsets:
            position += len(text[count:index].encode())
            count = index
            to_byte[index] = position
        try:
            return self.origin_spans_utf8([(to_byte[s], to_byte[e]) for s, e in spans])
        except KeyError:
            raise ValueError("a span is not inside the normalised text") from None

    def origin_spans_utf8(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """``origin_spans`` for spans given as byte offsets into ``utf8``."""
        size = len(self.utf8)
        for start, end in spans:
            if not 0 <= start < end <= size:
                raise ValueError(f"span [{start}, {end}) is not inside the normalised text")
        # Source offsets are needed at the first byte of each span and after its last byte.
        wanted = sorted({i for start, end in spans for i in (start, end - 1)})
        found = dict(zip(wanted, self._to_folded(wanted), strict=True))
        source_start, source_end = self._source_start, self._source_end
        return [
            (source_start(found[start][0]), source_end(found[end - 1][1])) for start, end in spans
        ]

    def origin_start_utf8(self, byte_index: int) -> int:
        """Where in ``source`` the character holding byte ``byte_index`` of ``utf8`` came from."""
        if not 0 <= byte_index < len(self.utf8):
            raise ValueError(f"byte {byte_index} is not inside the normalised text")
        return self._source_start(self._to_folded([byte_index])[0][0])

    def _to_folded(self, byte_indexes: list[int]) -> list[tuple[int, int]]:
        """For ascending byte offsets of ``utf8``: the folded-text character that holds each
        byte, as (its index, the index after it), walking the marked bytes once."""
        marked = self._marked
        plain = len(marked) == len(self.utf8)
        out: list[tuple[int, int]] = []
        position = kept = chars = 0  # `kept` kept bytes and `chars` characters before position
        char_start = 0
        for k in byte_indexes:
            need = k - kept
            if plain:
                position = k
            else:
                while need:  # every separator passed costs one more step
                    skipped = marked.count(0, position, position + need)
                    position += need
                    need = skipped
                while marked[position] == 0:
                    position += 1
            # Back to the lead byte, then count characters (non-continuation bytes) up to it.
            lead = position
            while marked[lead] & 0xC0 == 0x80:
                lead -= 1
            chars += len(marked[char_start:lead].translate(None, _CONTINUATION_BYTES))
            char_start = lead
            out.append((chars, chars + 1))
            kept = k
        return out

    def _source_start(self, folded_index: int) -> int:
        anchor = self._anchor_at(folded_index)
        if anchor is None:
            return folded_index
        if folded_index < anchor.marked_end:
            return anchor.start
        return folded_index - anchor.marked_end + anchor.end

    def _source_end(self, folded_end: int) -> int:
        anchor = self._anchor_at(folded_end - 1)
        if anchor is None:
            return folded_end
        if folded_end - 1 < anchor.marked_end:
            return anchor.end
        return folded_end - anchor.marked_end + anchor.end

    def _anchor_at(self, folded_index: int) -> _Anchor | None:
        """The last exotic segment that starts at or before ``folded_index``."""
        anchors = self._anchors
        if not anchors:
            return None
        i = bisect.bisect_right(anchors, folded_index, key=lambda a: a.marked_start) - 1
        return anchors[i] if i >= 0 else None


def _fold_exotic(text: str, pattern: re.Pattern[str], anchors: list[_Anchor]) -> str:
    """Fold the segments that hold exotic characters; record where each one came from."""
    attaching = char_tables().attaching
    pieces: list[str] = []
    copied = 0  # source text before this index is in `pieces`
    marked_len = 0
    seg_start = seg_end = -1  # the segment being collected, not yet folded

    def flush() -> None:
        nonlocal copied, marked_len
        plain = text[copied:seg_start]
        folded = fold_segment(text[seg_start:seg_end])
        pieces.append(plain)
        pieces.append(folded)
        marked_len += len(plain)
        anchors.append(_Anchor(marked_len, marked_len + len(folded), seg_start, seg_end))
        marked_len += len(folded)
        copied = seg_end

    for match in pattern.finditer(text):
        i = match.start()
        if text[i] in attaching:
            if i == seg_end:
                seg_end = i + 1
                continue
            start = max(i - 1, 0)  # the character the mark attaches to
        else:
            start = i
        if seg_end >= 0:
            flush()
        seg_start, seg_end = start, i + 1
    if seg_end >= 0:
        flush()
    pieces.append(text[copied:])
    return "".join(pieces)


def _has_astral(data: bytes) -> bool:
    return any(data.find(lead) != -1 for lead in (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4"))


def _fold(text: str, exotic: re.Pattern[str], anchors: list[_Anchor]) -> bytes:
    tables = char_tables()
    folded = text
    if exotic.search(text) is not None:
        folded = _fold_exotic(text, exotic, anchors)
    # Separators before the byte pass: the class scan is faster on text without NUL marks.
    return tables.separators.sub(_MARK, folded).encode()


def normalize(text: str) -> Normalized:
    """Normalise ``text`` for keyword matching (see the module docstring)."""
    tables = char_tables()
    anchors: list[_Anchor] = []
    if text.isascii():
        data = text.encode()
    elif len(text) < _SHORT:
        astral = tables.astral.search(text) is not None
        data = _fold(text, tables.exotic_or_astral if astral else tables.exotic, anchors)
    else:
        data = _fold(text, tables.exotic, anchors)
        if _has_astral(data):  # memchr over the bytes beats a regex scan of a long text
            anchors.clear()
            data = _fold(text, tables.exotic_or_astral, anchors)
    marked = data.translate(tables.ascii_table)
    return Normalized(text, marked, tuple(anchors))


def normalize_pattern(word: str) -> str:
    """Normalise a keyword exactly as texts are normalised."""
    return normalize(word).text
