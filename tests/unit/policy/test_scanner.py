"""The guard: span resolution on whole texts, and THE INVARIANT between whole texts and streams.

For any text and any chunking, ``"".join(feed(c) for c in chunks) + finish()`` equals
``apply(text).text`` with equal spans and blocked span. Checked for every chunk size from 1 to
8 and for seeded random chunkings, over Chinese and English texts with words split across
chunks, evasion variants, phone and ID numbers split across chunks, and digit runs that keep
growing.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from openautoglm.policy.pii import MaskShape
from openautoglm.policy.recognizers import RegexRecognizer, default_recognizers
from openautoglm.policy.scanner import (
    Detector,
    Guard,
    GuardResult,
    PiiDetector,
    Span,
    StreamDetector,
    WordDetector,
)
from openautoglm.policy.words import WordEntry, WordMatcher

MAX_YEAR = 2025


def _load_generator() -> ModuleType:
    path = Path(__file__).resolve().parent / "cases" / "make_cases.py"
    spec = importlib.util.spec_from_file_location("policy_case_generator", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
_RNG = random.Random(42)
ID_NUMBER = GEN.make_id(_RNG, birth="19491231")
CARD = GEN.make_card(_RNG, "622202", 16)
PHONE = "13812345678"

WORDS = WordMatcher(
    [
        WordEntry("赌博", "gambling"),
        WordEntry("网络赌场", "gambling"),
        WordEntry("冰毒", "drugs"),
        WordEntry("毒品~禁毒", "drugs"),
        WordEntry("代开&发票", "fraud"),
        WordEntry("bad", "en"),
        WordEntry("ass", "en"),
        WordEntry("phishing kit", "fraud"),
        WordEntry("cafe", "en"),
        WordEntry("炸弹", "weapons"),
        WordEntry("bomb", "weapons"),
        WordEntry("1381234", "digits"),
        WordEntry("café", "en"),
        WordEntry("각", "ko"),
    ],
    window=12,
)


class Substring:
    """A plain detector (no streaming hints): it relies on ``lookbehind`` alone."""

    def __init__(self, word: str, action: str = "mask") -> None:
        self.word = word
        self.action = action

    @property
    def lookbehind(self) -> int:
        return len(self.word)

    def find(self, text: str) -> list[Span]:
        spans, at = [], text.find(self.word)
        while at != -1:
            spans.append(
                Span(
                    at,
                    at + len(self.word),
                    f"substring-{self.word}",
                    self.action,
                    "#" * len(self.word),
                )
            )  # type: ignore[arg-type]
            at = text.find(self.word, at + 1)
        return spans


def _pii(action: str) -> list[Detector]:
    return [
        PiiDetector(f"pii-{name}", r, action)  # type: ignore[arg-type]
        for name, r in default_recognizers(MAX_YEAR).items()
    ]


GUARDS = {
    "mask-all": Guard([WordDetector("words", WORDS, "mask"), *_pii("mask")]),
    "block-weapons": Guard(
        [
            WordDetector("weapons", WORDS, "block", {"weapons"}),
            WordDetector("flag-en", WORDS, "flag", {"en"}),
            WordDetector("rest", WORDS, "mask", {"gambling", "drugs", "fraud", "digits"}),
            *_pii("mask"),
            PiiDetector(
                "emp",
                RegexRecognizer(
                    "emp", r"(?<![A-Z0-9])EMP\d{4}(?![A-Z0-9])", MaskShape(3, 0), max_length=7
                ),
                "mask",
            ),
            Substring("HELLO"),
        ]
    ),
    "block-pii": Guard([WordDetector("words", WORDS, "flag"), *_pii("block")]),
    # A custom pattern on its own: nothing else holds text back for it.
    "regex-only": Guard(
        [
            PiiDetector(
                "order",
                RegexRecognizer("order", r"(?<![0-9])ORD-\d{3,6}(?![0-9])", max_length=10),
                "mask",
            )
        ]
    ),
}

TEXTS = [
    "我们不赌博，也不去网络赌场。",
    "赌 * 博 在这里，还有赌\u200b博和赌，博。",
    "ＢＡＤ boys are b a d. The class is fine; ass is not, bAd!",
    f"电话{PHONE}，身份证{ID_NUMBER}，卡号{CARD}。",
    f"phone 138-1234-5678 then a run {PHONE}901234 and +86 {PHONE} ok",
    f"growing {PHONE}9",
    f"{PHONE}",
    f"卡号 {CARD[:4]} {CARD[4:8]} {CARD[8:12]} {CARD[12:]} 继续",
    f"证件 {ID_NUMBER[:6]} {ID_NUMBER[6:14]} {ID_NUMBER[14:]}",
    "mail zhang.san@example.com and 192.168.1.1:80 and fe80::1 done",
    "可以代开各类发票，也可以代开……很远很远很远很远很远的地方的发票",
    "禁毒宣传：远离毒品。另一边，毒品危害大，冰 毒也是。",
    "a cafe\u0301 and a cafe. ＣＡＦＥ café",
    "가\u11a8 and \u1100\u1161\u11a8 and 가 \u11a8",  # Hangul that composes across chunks
    "赌赌博博 and 炸 弹 after the block nothing",
    "bomb first, 13812345678 later",
    "EMP1234 and EMP12345 and HELLO HELLO, ORD-123 ORD-1234567 ORD-12x",
    "phishing  kit, PHISHING-KIT, phishing awareness kit",
    "",
    "   ",
    "1381234567890123456789",
]


def _stream(guard: Guard, chunks: list[str]) -> tuple[str, GuardResult]:
    stream = guard.stream()
    pieces = []
    for chunk in chunks:
        pieces.append(stream.feed(chunk))
        if stream.blocked is not None:
            assert pieces[-1] == "" or stream.blocked is not None
    pieces.append(stream.finish())
    return "".join(pieces), GuardResult("".join(pieces), stream.spans, stream.blocked)


def _fixed(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _random_chunks(text: str, rng: random.Random) -> Iterator[list[str]]:
    while True:
        chunks, i = [], 0
        while i < len(text):
            size = rng.choice([1, 1, 2, 3, 5, 8, 13, 40])
            chunks.append(text[i : i + size])
            i += size
        yield chunks


def _assert_invariant(guard: Guard, text: str, chunks: list[str]) -> None:
    expected = guard.apply(text)
    out, streamed = _stream(guard, chunks)
    assert out == expected.text, (text, chunks)
    assert streamed.spans == expected.spans, (text, chunks)
    assert streamed.blocked == expected.blocked, (text, chunks)


@pytest.mark.parametrize("name", sorted(GUARDS))
@pytest.mark.parametrize("size", range(1, 9))
def test_every_chunk_size(name: str, size: int) -> None:
    for text in TEXTS:
        _assert_invariant(GUARDS[name], text, _fixed(text, size))


@pytest.mark.parametrize("name", sorted(GUARDS))
def test_random_chunkings(name: str) -> None:
    rng = random.Random(name)
    for text in TEXTS:
        chunkings = _random_chunks(text, rng)
        for _ in range(25):
            _assert_invariant(GUARDS[name], text, next(chunkings))


FUZZ = (
    list("赌博网络场冰毒品禁代开发票炸弹 *，。\u200b")
    + list("bad ass cafe bomb kit")
    + list("0123456789013813 -+.@:xX")
    + [
        "\u0301",
        "ＢＡ",
        "EMP",
        "HELLO",
        PHONE,
        ID_NUMBER,
        CARD,
        "a@b.cn",
        "10.0.0.1",
        "::1",
        "ｂａｄ",
        "\u1161",
        "\u11a8",
        "㍿",
        "🎲",
        "ß",
        "ORD-12",
        "caf",
        "e",
        "가",
        "\u1100",
    ]
)


@pytest.mark.parametrize("name", sorted(GUARDS))
@pytest.mark.parametrize("seed", range(3))
def test_fuzzed_texts(name: str, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(120):
        text = "".join(rng.choice(FUZZ) for _ in range(rng.randint(0, 40)))
        chunkings = _random_chunks(text, rng)
        for chunks in (_fixed(text, 1), _fixed(text, 3), next(chunkings), next(chunkings)):
            _assert_invariant(GUARDS[name], text, chunks)


# -- what apply does ----------------------------------------------------------------------


def test_masks_flags_and_blocks() -> None:
    guard = GUARDS["block-weapons"]
    result = guard.apply(f"赌 博 is bad; call {PHONE}; 炸弹 here; 冰毒 later")
    assert result.text == "*** is bad; call 138****5678; "
    assert result.blocked is not None and result.blocked.rule_id == "weapons"
    # Ordered by start; "1381234" is no hit inside the phone (ASCII boundary rule).
    assert [(s.rule_id, s.action) for s in result.spans] == [
        ("rest", "mask"),
        ("flag-en", "flag"),
        ("pii-mobile", "mask"),
        ("weapons", "block"),
    ]


def test_text_without_spans_is_unchanged() -> None:
    result = GUARDS["mask-all"].apply("平常的一句话 nothing here")
    assert result == GuardResult("平常的一句话 nothing here", [], None)


def test_overlaps_earlier_start_then_longer_wins() -> None:
    guard = Guard(
        [Substring("1381234"), PiiDetector("mobile", default_recognizers()["mobile"], "mask")]
    )
    # The substring and the phone start together: the longer phone mask wins.
    result = guard.apply(f"tel {PHONE}.")
    assert result.text == "tel 138****5678."
    assert [s.rule_id for s in result.spans] == ["mobile", "substring-1381234"]
    # A span starting inside an earlier mask only masks what sticks out, one * per character.
    network = WordMatcher([WordEntry("网络")])
    inner = Guard([Substring("赌博网"), WordDetector("w", network, "mask")])
    assert inner.apply("x赌博网络x").text == "x###*x"


def test_a_block_inside_a_mask_keeps_the_whole_mask() -> None:
    guard = Guard(
        [PiiDetector("mobile", default_recognizers()["mobile"], "mask"), Substring("5678", "block")]
    )
    text = f"a {PHONE} b"
    result = guard.apply(text)
    assert result.blocked is not None and result.text == "a 138****5678"
    assert _stream(guard, _fixed(text, 1))[0] == "a 138****5678"


def test_nothing_is_released_after_a_block() -> None:
    stream = GUARDS["block-weapons"].stream()
    released = [stream.feed(c) for c in "safe text 炸弹 and more text"]
    assert "".join(released) == "safe text "
    assert stream.feed("more") == "" and stream.finish() == "" and stream.finish() == ""
    assert stream.blocked is not None


def test_feed_after_finish_is_an_error() -> None:
    stream = GUARDS["mask-all"].stream()
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed("x")


def test_held_back_text_is_only_the_undecided_tail() -> None:
    stream = GUARDS["mask-all"].stream()
    # The last character is always held: a combining mark may still join it.
    assert stream.feed("普通的文字，") == "普通的文字"
    assert stream.feed("赌") == "，"  # 赌 could start 赌博
    assert stream.feed("场") == "赌"
    assert stream.feed(f"电话 {PHONE[:5]}") == "场电话"  # the digit run may grow into a phone
    assert stream.feed(PHONE[5:] + "。") == " 138****5678"
    assert stream.finish() == "。"


def test_adapters_are_stream_detectors_and_check_actions() -> None:
    assert isinstance(WordDetector("w", WORDS, "mask"), StreamDetector)
    assert isinstance(PiiDetector("p", default_recognizers()["email"], "flag"), StreamDetector)
    with pytest.raises(ValueError):
        WordDetector("w", WORDS, "redact")  # type: ignore[arg-type]
