"""Keyword libraries: matching, the ASCII boundary rule, combinations, the library format."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from openautoglm.policy.words import WordEntry, WordMatcher, load_library, parse_entry


def hits(matcher: WordMatcher, text: str) -> list[tuple[str, str]]:
    return [(text[h.start : h.end], h.entry.text) for h in matcher.find(text)]


@pytest.fixture
def matcher() -> WordMatcher:
    return WordMatcher(
        [
            WordEntry("赌博", "gambling"),
            WordEntry("网络赌博", "gambling"),
            WordEntry("ass", "en"),
            WordEntry("bad", "en"),
            WordEntry("phishing kit", "fraud"),
            WordEntry("x光", "mixed"),
        ]
    )


@pytest.mark.parametrize(
    "text",
    [
        "赌博",
        "赌 博",
        "赌*博",
        "赌-博",
        "赌\u200b博",
        "赌，博",
        "赌🎲博",
        "赌\u3000博",
    ],
)
def test_chinese_evasions_hit(matcher: WordMatcher, text: str) -> None:
    assert hits(matcher, f"不要{text}了") == [(text, "赌博")]


@pytest.mark.parametrize(
    "text", ["bad", "BAD", "ＢＡＤ", "b a d", "b.a.d", "B-a-D", "𝐛𝐚𝐝", "b\u0336a\u0336d\u0336"]
)
def test_english_evasions_hit(matcher: WordMatcher, text: str) -> None:
    assert hits(matcher, f"so {text}. ok") == [(text, "bad")]


@pytest.mark.parametrize("text", ["class", "assess", "badge", "bad1", "ａbad", "xbad"])
def test_ascii_words_need_boundaries(matcher: WordMatcher, text: str) -> None:
    assert hits(matcher, text) == []


def test_cjk_has_no_boundary_rule(matcher: WordMatcher) -> None:
    assert hits(matcher, "他们赌博的事") == [("赌博", "赌博")]
    assert hits(matcher, "abc赌博123") == [("赌博", "赌博")]


def test_mixed_pattern_checks_only_its_ascii_side(matcher: WordMatcher) -> None:
    assert hits(matcher, "拍x光片") == [("x光", "x光")]
    assert hits(matcher, "box光") == []


def test_overlapping_entries_are_all_reported_in_order(matcher: WordMatcher) -> None:
    assert hits(matcher, "网络赌博") == [("网络赌博", "网络赌博"), ("赌博", "赌博")]


def test_multi_word_english_entry(matcher: WordMatcher) -> None:
    assert hits(matcher, "a PHISHING  KIT sold") == [("PHISHING  KIT", "phishing kit")]
    assert hits(matcher, "phishing awareness kit") == []


def test_combination_within_window() -> None:
    matcher = WordMatcher([WordEntry("代开&发票", "fraud")], window=10)
    assert hits(matcher, "可代开各类发票") == [("代开", "代开&发票"), ("发票", "代开&发票")]
    assert hits(matcher, "发票可以代开") == [("发票", "代开&发票"), ("代开", "代开&发票")]
    assert hits(matcher, "代开" + "一" * 20 + "发票") == []
    assert hits(matcher, "只有发票") == []


def test_combination_with_exclusion() -> None:
    matcher = WordMatcher([WordEntry("毒品~禁毒", "drugs"), WordEntry("a&b~c", "x")], window=8)
    assert hits(matcher, "毒品危害") == [("毒品", "毒品~禁毒")]
    assert hits(matcher, "禁毒：远离毒品") == []
    assert hits(matcher, "禁毒" + "一" * 10 + "毒品") == [("毒品", "毒品~禁毒")]
    assert hits(matcher, "a b") == [("a", "a&b~c"), ("b", "a&b~c")]
    assert hits(matcher, "a b c") == []


def test_same_part_twice_needs_two_occurrences() -> None:
    matcher = WordMatcher([WordEntry("钱&钱")], window=5)
    assert hits(matcher, "钱") == []
    assert hits(matcher, "钱钱") == [("钱", "钱&钱"), ("钱", "钱&钱")]


def test_longest_counts_combinations_as_window_plus_part() -> None:
    assert WordMatcher([WordEntry("赌 博"), WordEntry("abc")]).longest == 3
    assert WordMatcher([WordEntry("赌博&网站"), WordEntry("x")], window=20).longest == 22
    assert WordMatcher([]).longest == 0
    assert WordMatcher([]).find("anything") == []


def test_empty_parts_are_refused() -> None:
    for text in ("", "***", "a&", "&b", "a~", "a& &b"):
        with pytest.raises(ValueError):
            parse_entry(text)


def test_duplicate_entries_hit_once() -> None:
    matcher = WordMatcher([WordEntry("赌博", "a"), WordEntry("赌博", "a"), WordEntry("赌博", "b")])
    assert [h.entry.category for h in matcher.find("赌博")] == ["a", "b"]


def test_load_library(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text(
        "\ufeff# a comment\n\n赌博\n# category: drugs\n冰毒\nmeth\tdrugs-en\n"
        "#Category:fraud\n代开&发票\n",
        encoding="utf-8",
    )
    assert load_library(path) == [
        WordEntry("赌博", "default"),
        WordEntry("冰毒", "drugs"),
        WordEntry("meth", "drugs-en"),
        WordEntry("代开&发票", "fraud"),
    ]


@pytest.mark.parametrize(
    ("content", "line"),
    [("ok\n\n***\n", 3), ("ok\na&\n", 2), ("# category:\n", 1), ("ok\n\t cat\n", 2)],
)
def test_load_library_names_the_bad_line(tmp_path: Path, content: str, line: int) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=f"bad.txt:{line}:"):
        load_library(path)


def test_ten_thousand_entries() -> None:
    rng = random.Random(1)
    cjk = [chr(cp) for cp in range(0x4E00, 0x4E00 + 2000)]
    words = {"".join(rng.choice(cjk) for _ in range(rng.randint(2, 4))) for _ in range(6000)}
    words |= {
        "".join(rng.choice("abcdefghij") for _ in range(rng.randint(4, 9))) for _ in range(4000)
    }
    matcher = WordMatcher([WordEntry(w) for w in words])
    sample = sorted(words)[:50]
    text = " ".join(sample)
    found = {text[h.start : h.end] for h in matcher.find(text)}
    assert set(sample) <= found


@pytest.mark.parametrize("seed", range(3))
def test_stable_hits_survive_any_continuation(seed: int) -> None:
    """What ``scan_stream`` calls stable is exactly the full text's hits there."""
    rng = random.Random(seed)
    matcher = WordMatcher(
        [
            WordEntry("赌博"),
            WordEntry("ass"),
            WordEntry("bad"),
            WordEntry("代开&发票"),
            WordEntry("毒品~禁毒"),
        ],
        window=6,
    )
    # Attaching characters (a combining mark, a Hangul vowel) change the segment before them.
    alphabet = [*"赌博代开发票毒品禁 *a s b d cl，\u200b", "\u0301", "\u1161", "ｄ", "e"]
    for _ in range(150):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        full = [(h.start, h.end, h.entry) for h in matcher.find(text)]
        for cut in range(len(text) + 1):
            stable, found = matcher.scan_stream(text[:cut], 0)
            assert [(h.start, h.end, h.entry) for h in found] == [
                f for f in full if f[0] < stable
            ], (text, cut)
