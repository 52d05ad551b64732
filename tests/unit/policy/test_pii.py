"""PII recognisers: what they find, what they refuse, how they mask, and that they are local."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from openautoglm.policy.pii import (
    BankCardRecognizer,
    IdCardRecognizer,
    MaskShape,
    MobileRecognizer,
    Recognizer,
    is_valid_id_card,
    luhn_valid,
)
from openautoglm.policy.recognizers import (
    EmailRecognizer,
    Ipv4Recognizer,
    Ipv6Recognizer,
    RegexRecognizer,
    default_recognizers,
    find_pii,
)
from openautoglm.policy.scanner import PiiDetector


def _load_generator() -> ModuleType:
    path = Path(__file__).resolve().parent / "cases" / "make_cases.py"
    spec = importlib.util.spec_from_file_location("policy_case_generator", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
MAX_YEAR = 2025


def values(recognizer: Recognizer, text: str) -> list[str]:
    hits = recognizer.find(text)
    assert all(text[h.start : h.end] == h.value for h in hits)
    return [h.value for h in hits]


# -- mobile -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("电话13812345678。", ["13812345678"]),
        ("call 138-1234-5678 now", ["138-1234-5678"]),
        ("手机 138 1234 5678", ["138 1234 5678"]),
        ("+8613812345678", ["+8613812345678"]),
        ("tel: +86 139-1234-5678", ["+86 139-1234-5678"]),
        ("0086 15012345678", ["0086 15012345678"]),
        ("13812345678和13912345678", ["13812345678", "13912345678"]),
        ("12812345678", []),  # no mobile prefix 12
        ("1381234567", []),  # ten digits
        ("138123456789", []),  # twelve digits
        ("订单9913812345678", []),  # inside a longer run
        ("13812345678901234567", []),
        ("AB13812345678", []),  # part of a code
        ("13812345678.50", []),  # a decimal
        ("138-1234-5678-9", []),
        ("12 13812345678", []),  # a run joined by a space
        ("138 1234-5678", []),  # mixed separators are not a grouping
        ("8613812345678", []),  # 86 without + is just more digits
    ],
)
def test_mobile(text: str, expected: list[str]) -> None:
    assert values(MobileRecognizer(), text) == expected


def test_mobile_mask_keeps_three_and_four() -> None:
    mobile = MobileRecognizer()
    assert mobile.mask("13812345678") == "138****5678"
    assert mobile.mask("+86 138-1234-5678") == "+86 138-****-5678"
    assert MobileRecognizer(MaskShape(0, 2, "#")).mask("13812345678") == "#########78"


# -- 身份证 -------------------------------------------------------------------------------


def test_id_card_valid_and_invalid() -> None:
    rng = random.Random(1)
    recognizer = IdCardRecognizer(max_year=MAX_YEAR)
    for _ in range(200):
        number = GEN.make_id(rng)
        assert is_valid_id_card(number, MAX_YEAR)
        assert values(recognizer, f"证件{number}。") == [number]
        assert values(recognizer, f"证件{GEN.broken_check(number)}。") == []
        assert values(recognizer, f"号{number}1") == []
        assert values(recognizer, f"x{number}") == []
        grouped = f"{number[:6]} {number[6:14]} {number[14:]}"
        assert values(recognizer, f"证件 {grouped} ok") == [grouped]
        four = f"{number[:6]}-{number[6:10]}-{number[10:14]}-{number[14:]}"
        assert values(recognizer, f"证件 {four} ok") == [four]


@pytest.mark.parametrize("birth", ["19900230", "19901301", "18991231", "20991231", "19900000"])
def test_id_card_rejects_impossible_birth_dates(birth: str) -> None:
    number = GEN.make_id(random.Random(2), birth=birth)
    assert values(IdCardRecognizer(max_year=MAX_YEAR), number) == []


@pytest.mark.parametrize("region", ["000000", "160101", "990101", "720000", "840000"])
def test_id_card_rejects_unknown_provinces(region: str) -> None:
    number = GEN.make_id(random.Random(3), region=region)
    assert values(IdCardRecognizer(max_year=MAX_YEAR), number) == []


def test_id_card_check_digit_x_either_case_and_mask() -> None:
    rng = random.Random(4)
    number = next(n for n in (GEN.make_id(rng) for _ in range(1000)) if n.endswith("X"))
    recognizer = IdCardRecognizer(max_year=MAX_YEAR)
    lower = number[:-1] + "x"
    assert values(recognizer, f"{number}，{lower}") == [number, lower]
    assert recognizer.mask(number) == number[:6] + "********" + number[-4:]


# -- bank cards ---------------------------------------------------------------------------


def test_bank_cards() -> None:
    rng = random.Random(5)
    recognizer = BankCardRecognizer(max_year=MAX_YEAR)
    for prefix, length in [
        ("622202", 16),
        ("622202", 19),
        ("436742", 16),
        ("524047", 16),
        ("356895", 16),
        ("621700", 17),
    ]:
        card = GEN.make_card(rng, prefix, length)
        assert luhn_valid(card)
        assert values(recognizer, f"卡号{card}。") == [card]
        assert values(recognizer, f"卡号{GEN.broken_check(card)}。") == []
        grouped = " ".join(card[i : i + 4] for i in range(0, len(card), 4))
        assert values(recognizer, f"card {grouped}.") == [grouped]
        dashed = grouped.replace(" ", "-")
        assert values(recognizer, f"card {dashed}.") == [dashed]
        assert values(recognizer, f"ref{card}") == []
        assert values(recognizer, f"{card}0") == []
    assert recognizer.mask("6222021234567890") == "622202******7890"


def test_bank_card_rejects_unknown_issuers_and_lengths() -> None:
    rng = random.Random(6)
    recognizer = BankCardRecognizer(max_year=MAX_YEAR)
    assert values(recognizer, GEN.make_card(rng, "912345", 16)) == []
    assert values(recognizer, GEN.make_card(rng, "436742", 18)) == []  # Visa is 16 or 19
    assert values(recognizer, GEN.make_card(rng, "524047", 19)) == []  # Mastercard is 16


def test_an_id_number_is_never_a_card() -> None:
    """18 digits with a region and birth date are an ID (even mistyped), never a card."""
    rng = random.Random(7)
    recognizer = BankCardRecognizer(max_year=MAX_YEAR)
    for _ in range(300):
        number = GEN.make_id(rng, region=rng.choice(["620102", "650102", "360102"]))
        for candidate in (number, GEN.broken_check(number)):
            if candidate[-1].isdigit():
                assert values(recognizer, candidate) == []


# -- e-mail and IP addresses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail zhang.san@example.com.", ["zhang.san@example.com"]),
        ("<ops+tag@corp.example.cn>", ["ops+tag@corp.example.cn"]),
        ("联系13800138000@qq.com谢谢", ["13800138000@qq.com"]),
        ("a@b", []),
        ("@example.com", []),
        ("x@@example.com", []),
        ("a..b@example.com", []),
        ("user@example", []),
        ("a@b@example.com", []),
        ("x" * 65 + "@example.com", []),
    ],
)
def test_email(text: str, expected: list[str]) -> None:
    assert values(EmailRecognizer(), text) == expected


def test_email_mask() -> None:
    assert EmailRecognizer().mask("zhao@example.com") == "z***@example.com"
    assert EmailRecognizer().mask("z@example.com") == "*@example.com"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host 192.168.1.1:8080", ["192.168.1.1"]),
        ("IP地址10.0.0.1。", ["10.0.0.1"]),
        ("end 8.8.8.8.", ["8.8.8.8"]),
        ("256.1.1.1", []),
        ("1.2.3.4.5", []),
        ("01.2.3.4", []),
        ("v1.2.3.4", []),
        ("1.2.3", []),
        ("1234.1.1.1", []),
        ("::ffff:1.2.3.4", []),  # part of an IPv6 address
    ],
)
def test_ipv4(text: str, expected: list[str]) -> None:
    assert values(Ipv4Recognizer(), text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("addr 2001:db8::1 ok", ["2001:db8::1"]),
        ("loopback ::1.", ["::1"]),
        ("fe80::1ff:fe23:4567:890a", ["fe80::1ff:fe23:4567:890a"]),
        ("::ffff:192.0.2.128", ["::ffff:192.0.2.128"]),
        ("at 12:30:45", []),
        ("std::vector", []),
        ("1::2::3", []),
        ("2001:db8::g1", []),
        ("a:b", []),
    ],
)
def test_ipv6(text: str, expected: list[str]) -> None:
    assert values(Ipv6Recognizer(), text) == expected


def test_ip_masks_hide_the_last_group() -> None:
    assert Ipv4Recognizer().mask("192.168.1.23") == "192.168.1.**"
    assert Ipv6Recognizer().mask("2001:db8::1ab") == "2001:db8::***"


# -- custom patterns and the whole set --------------------------------------------------------


def test_regex_recognizer() -> None:
    employee = RegexRecognizer("employee_id", r"(?<![A-Z0-9])EMP\d{6}(?![A-Z0-9])", MaskShape(3, 2))
    assert values(employee, "工号EMP123456，") == ["EMP123456"]
    assert employee.mask("EMP123456") == "EMP****56"
    with pytest.raises(ValueError, match="employee"):
        RegexRecognizer("employee", r"EMP(\d{6}")


def test_find_pii_prefers_the_longer_hit() -> None:
    hits = find_pii("联系13800138000@qq.com", default_recognizers(MAX_YEAR).values())
    assert [(h.kind, h.value) for h in hits] == [("email", "13800138000@qq.com")]


def test_default_recognizers_by_name() -> None:
    assert set(default_recognizers()) == {"mobile", "id_card", "bank_card", "email", "ipv4", "ipv6"}


FUZZ_ALPHABET = list("0123456789012345678901234567890123456789 -+.,:/@xX") + list(
    "ab中文１２\u200b\U0001f600\u0301"
)


def _fuzz_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        text = "".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(0, 60)))
        if rng.random() < 0.3:  # plant a real value somewhere
            value = rng.choice(
                [
                    GEN.make_id(rng),
                    GEN.make_card(rng),
                    GEN.make_phone(rng),
                    "a.b@example.com",
                    "10.1.2.3",
                    "fe80::1",
                ]
            )
            at = rng.randint(0, len(text))
            text = text[:at] + value + text[at:]
        texts.append(text)
    return texts


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_never_raises_and_values_are_slices(seed: int) -> None:
    recognizers = list(default_recognizers(MAX_YEAR).values())
    for text in _fuzz_texts(seed, 400):
        for recognizer in recognizers:
            for hit in recognizer.find(text):
                assert text[hit.start : hit.end] == hit.value
                recognizer.mask(hit.value)


@pytest.mark.parametrize("seed", range(3))
def test_hits_are_decided_locally(seed: int) -> None:
    """Scanning from ``context_start`` finds the same hits as scanning the whole text."""
    rng = random.Random(seed)
    recognizers = [
        *default_recognizers(MAX_YEAR).values(),
        RegexRecognizer("emp", r"(?<![A-Z0-9])EMP\d{6}(?![A-Z0-9])", max_length=9),
    ]
    for text in _fuzz_texts(seed + 10, 300):
        pos = rng.randint(0, len(text))
        for recognizer in recognizers:
            start = PiiDetector("r", recognizer, "flag").context_start(text, pos)
            full = [(h.start, h.end) for h in recognizer.find(text) if h.start >= pos]
            part = [
                (h.start + start, h.end + start)
                for h in recognizer.find(text[start:])
                if h.start + start >= pos
            ]
            assert part == full, (recognizer.name, text, pos)


@pytest.mark.parametrize("seed", range(3))
def test_stable_hits_survive_any_continuation(seed: int) -> None:
    """Hits that ``scan_stream`` calls stable are exactly the full text's hits there."""
    for text in _fuzz_texts(seed + 20, 200):
        for recognizer in default_recognizers(MAX_YEAR).values():
            detector = PiiDetector("r", recognizer, "flag")
            full = [(h.start, h.end) for h in recognizer.find(text)]
            for cut in range(len(text) + 1):
                stable, spans = detector.scan_stream(text[:cut], 0)
                assert [(s.start, s.end) for s in spans] == [f for f in full if f[0] < stable]
