"""Normalisation: what texts become, the map back to the original, and locality."""

from __future__ import annotations

import random
import unicodedata

import pytest

from openautoglm.policy import folding
from openautoglm.policy import normalize as module
from openautoglm.policy.folding import fold_char, is_attaching, segment_start
from openautoglm.policy.normalize import normalize, normalize_pattern

EVASIONS = [
    ("敏 感 词", "敏感词"),
    ("敏*感*词", "敏感词"),
    ("敏-感_词", "敏感词"),
    ("敏\u200b感\u200c词\u200d", "敏感词"),
    ("敏\u2060感\ufeff词", "敏感词"),
    ("敏，感。词、", "敏感词"),
    ("敏·感|词/\\~", "敏感词"),
    ("ＢＡＤ", "bad"),
    ("b a d.", "bad"),
    ("B.a.D", "bad"),
    ("bAd", "bad"),
    ("𝐛𝐚𝐝", "bad"),  # mathematical bold letters
    ("b\u0336a\u0336d\u0336", "bad"),  # strike-through combining marks
    ("赌🎲博", "赌博"),
    ("Straße", "strasse"),
    ("İstanbul", "istanbul"),
    ("\u3000全角空格\u3000", "全角空格"),
    ("１２３", "123"),
    ("㍿", "株式会社"),
    ("ﬁne", "fine"),
]


@pytest.mark.parametrize(("text", "expected"), EVASIONS)
def test_evasion_variants_normalise_to_the_plain_word(text: str, expected: str) -> None:
    assert normalize(text).text == expected
    assert normalize_pattern(text) == expected


def test_composed_and_decomposed_accents_agree() -> None:
    assert normalize("café").text == normalize("cafe\u0301").text == "café"


def test_kept_characters() -> None:
    # Letters, digits and CJK radicals (they stand in for ideographs) survive.
    assert normalize("abc123中文⻏").text == "abc123中文⻏"
    assert normalize("").text == ""
    assert normalize(" ,.!?").text == ""


def test_one_character_can_become_several() -> None:
    norm = normalize("x㍿y")
    assert norm.text == "x株式会社y"
    assert [norm.origin_span(i, i + 1) for i in range(len(norm.text))] == [
        (0, 1),
        (1, 2),
        (1, 2),
        (1, 2),
        (1, 2),
        (2, 3),
    ]
    assert norm.origin_span(3, 6) == (1, 3)


def test_origin_span_covers_separators_inside_but_not_around() -> None:
    text = "  赌 * 博  "
    norm = normalize(text)
    assert norm.text == "赌博"
    start, end = norm.origin_span(0, 2)
    assert text[start:end] == "赌 * 博"


def test_origin_span_rejects_spans_outside_the_text() -> None:
    norm = normalize("abc")
    with pytest.raises(ValueError):
        norm.origin_span(2, 4)
    with pytest.raises(ValueError):
        norm.origin_span(1, 1)


def test_fold_char_and_attaching() -> None:
    assert fold_char("Ａ") == "a"
    assert fold_char(" ") == ""
    assert is_attaching("\u0301")
    assert not is_attaching("a")
    assert segment_start("ae\u0301\u0302", 3) == 1


# -- a reference implementation, written independently, character by character ----------

_DELETED = {
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


def _reference_deleted(ch: str) -> bool:
    cp = ord(ch)
    if 0x2E80 <= cp <= 0x2FDF:
        return False
    if 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF:
        return True
    if ch in "\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0":
        return True
    category = unicodedata.category(ch)
    if category == "Mn":
        return unicodedata.combining(ch) != 0
    return category in _DELETED


def _reference(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Segments (a non-attaching character and the attaching ones after it), each folded."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or not is_attaching(text[i]):
            folded = unicodedata.normalize("NFKC", text[start:i]).casefold()
            for ch in folded:
                if not _reference_deleted(ch):
                    out.append(ch)
                    spans.append((start, i))
            start = i
    return "".join(out), spans


ALPHABET = (
    list("abcXYZ019 .,*-_|/\\~")
    + list("敏感词赌博，。、")
    + ["\u200b", "\u200d", "\ufeff"]
    + list("ＡＢｃ１")
    + [
        "㍿",
        "ﬁ",
        "ß",
        "İ",
        "\u0301",
        "\u0336",
        "\u0308",
        "🎲",
        "𝐛",
        "가",
        "\u1100",
        "\u1161",
        "\u11a8",
        "\u3000",
        "…",
        "①",
        "™",
        "\u0f73",
    ]
)


def _random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_reference_text_and_map(seed: int) -> None:
    for text in _random_texts(300, seed):
        expected_text, expected_spans = _reference(text)
        norm = normalize(text)
        assert norm.text == expected_text, text
        for i, (start, end) in enumerate(expected_spans):
            got_start, got_end = norm.origin_span(i, i + 1)
            # An expanding segment maps as a whole; never outside it.
            assert start <= got_start and got_end <= end and got_start < got_end, (text, i)


@pytest.mark.parametrize("seed", range(4))
def test_batch_and_single_maps_agree(seed: int) -> None:
    rng = random.Random(seed)
    for text in _random_texts(200, seed + 100):
        norm = normalize(text)
        size = len(norm.text)
        if not size:
            continue
        spans = []
        for _ in range(5):
            start = rng.randrange(size)
            spans.append((start, rng.randint(start + 1, size)))
        assert norm.origin_spans(spans) == [norm.origin_span(s, e) for s, e in spans]
        first = norm.origin_span(spans[0][0], spans[0][0] + 1)
        last = norm.origin_span(spans[0][1] - 1, spans[0][1])
        assert norm.origin_span(*spans[0]) == (first[0], last[1])


@pytest.mark.parametrize("seed", range(4))
def test_normalisation_is_local(seed: int) -> None:
    """Cut anywhere before a non-attaching character: the parts normalise independently."""
    rng = random.Random(seed)
    for text in _random_texts(300, seed + 200):
        cut = rng.randint(0, len(text))
        if cut < len(text) and is_attaching(text[cut]):
            continue
        assert normalize(text).text == normalize(text[:cut]).text + normalize(text[cut:]).text


def test_long_text_takes_the_same_paths() -> None:
    """Texts above the short-text threshold (astral check by bytes) normalise alike."""
    piece = "赌 博 ＢＡＤ 𝐛𝐚𝐝 ㍿ e\u0301 "
    text = piece * (module._SHORT // len(piece) + 2)
    norm = normalize(text)
    assert norm.text == normalize(piece).text * (module._SHORT // len(piece) + 2)
    size = len(normalize(piece).text)
    last = len(norm.text) - size
    start, end = norm.origin_span(last, last + 2)
    assert text[start:end] == "赌 博"


def test_skipped_blocks_hold_nothing_to_fold() -> None:
    """The table builder skips big blocks; none of their characters would change."""
    for low, high in folding._PLAIN_BLOCKS:
        for cp in range(low, high + 1, 7):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            ch = chr(cp)
            assert folding._fold_char(ch) == ch, hex(cp)
            assert not is_attaching(ch), hex(cp)
