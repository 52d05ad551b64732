"""Writes the accuracy test set next to this file (deterministic: fixed seed, no downloads).

    python tests/unit/policy/cases/make_cases.py

How the cases are made:

* ``keywords.txt`` is a small hand-curated library (gambling, drugs, fraud, weapons; Chinese
  and English; two combination rules and one exclusion rule).
* ``sensitive_words.jsonl``: every library word in short business sentences, plain and in
  evasion variants (spaces, ``*``, ``-``, ``.``, zero-width characters, full-width forms,
  mixed case, CJK punctuation between characters), the combination rules inside and outside
  their window, and near misses that must not hit (``class`` for ``ass``, a word inside a
  longer English word, the exclusion context).
* ``pii.jsonl``: 身份证 numbers generated with a valid region, birth date and ISO 7064
  MOD 11-2 check digit (``make_id``), the same with a wrong check digit, a wrong date or
  region; card numbers completed with a Luhn check digit (``luhn_complete``) and broken
  ones; phones with and without +86 and separators; all of them also inside longer digit
  runs, next to letters and as decimals (must not hit); e-mails and IPv4/IPv6 addresses, valid
  and invalid.
* ``clean_text.jsonl``: ordinary business Chinese and English with order and tracking
  numbers, dates, prices, versions, hotlines and phone-like numbers that are not phones: no
  detector may fire.

Each line: ``{"text": ..., "expect": [[kind_or_category, value], ...]}``; ``value`` is the
original text of the hit (for words, of the part that hit).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 7
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
REGIONS = (
    "110105",
    "310104",
    "440305",
    "330106",
    "510107",
    "420111",
    "320102",
    "610113",
    "370202",
    "500103",
    "210102",
    "130102",
    "650102",
    "710000",
    "810000",
)


def id_check_digit(first17: str) -> str:
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS, strict=True)) % 11]


def make_id(rng: random.Random, region: str | None = None, birth: str | None = None) -> str:
    region = region or rng.choice(REGIONS)
    birth = birth or f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    first17 = region + birth + f"{rng.randint(0, 999):03d}"
    return first17 + id_check_digit(first17)


def luhn_complete(body: str) -> str:
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            value = int(ch) * (2 if i % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def make_card(rng: random.Random, prefix: str = "622202", length: int = 16) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return luhn_complete(body)


def make_phone(rng: random.Random) -> str:
    return "1" + rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9))


def broken_check(number: str) -> str:
    last = number[-1]
    return number[:-1] + ("0" if last not in "0Xx" else "1")


ZH_FRAMES = ("请注意{}这个问题。", "他说{}很危险", "关于{}的报道，", "{}", "网上出现了{}广告")
EN_FRAMES = ("beware of {} offers.", "the report mentions {} twice", "{}", "news: {}!")


def _zh_variants(word: str) -> list[str]:
    chars = list(word)
    return [
        word,
        " ".join(chars),
        "*".join(chars),
        "-".join(chars),
        "\u200b".join(chars),
        "，".join(chars),
        "\u3000".join(chars),
        ".".join(chars),
        "🎲".join(chars),
        " * ".join(chars),
    ]


def _en_variants(word: str) -> list[str]:
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" for c in word)
    bold = "".join(chr(0x1D41A + ord(c) - 97) if "a" <= c <= "z" else c for c in word)
    struck = "".join(c + "\u0336" for c in word)
    return [
        word,
        word.upper(),
        word.title(),
        " ".join(word),
        "*".join(word),
        fullwidth,
        "\u200b".join(word),
        "-".join(word.upper()),
        bold,
        struck,
        ".".join(word),
    ]


def word_cases(rng: random.Random) -> list[dict[str, object]]:
    library = [
        line.split("\t")
        for line in (HERE / "keywords.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    cases: list[dict[str, object]] = []
    category = ""
    for line in (HERE / "keywords.txt").read_text().splitlines():
        if line.startswith("# category:"):
            category = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "&" not in line and "~" not in line:
            word = line.split("\t")[0]
            cjk = not word.isascii()
            for variant in _zh_variants(word) if cjk else _en_variants(word):
                frame = rng.choice(ZH_FRAMES if cjk else EN_FRAMES)
                cases.append({"text": frame.format(variant), "expect": [[category, variant]]})
    assert library
    cases += [
        {"text": "可以代开各类发票，联系我", "expect": [["fraud", "代开"], ["fraud", "发票"]]},
        {"text": "代 开 增值税发票", "expect": [["fraud", "代 开"], ["fraud", "发票"]]},
        {"text": "代开" + "，这是一段很长很长的无关内容" * 4 + "发票", "expect": []},
        {"text": "公司按规定开具发票", "expect": []},
        {"text": "禁毒宣传：远离毒品，珍爱生命", "expect": []},
        {"text": "毒品危害大", "expect": [["drugs", "毒品"]]},
        {"text": "the class passed the assessment", "expect": []},
        {"text": "methodology and methane are fine", "expect": []},
        {"text": "cocaine-free energy drinks", "expect": [["drugs", "cocaine"]]},
        {"text": "a classic heroine of the novel", "expect": []},
        {"text": "我们讨论了赌博的危害", "expect": [["gambling", "赌博"]]},
        {"text": "那本书里的枪战场面", "expect": []},
        {"text": "buy a silencer online", "expect": [["weapons", "silencer"]]},
        {"text": "the phishing kit was sold", "expect": [["fraud", "phishing kit"]]},
        {"text": "phishing awareness kit", "expect": []},
        {"text": "PHISHING  KIT", "expect": [["fraud", "PHISHING  KIT"]]},
    ]
    return cases


def pii_cases(rng: random.Random) -> list[dict[str, object]]:
    cases: list[dict[str, object]] = []

    def add(text: str, *expect: tuple[str, str]) -> None:
        cases.append({"text": text, "expect": [list(e) for e in expect]})

    for _ in range(30):
        number = make_id(rng)
        add(f"身份证号：{number}，请核对", ("id_card", number))
        add(
            f"证件 {number[:6]} {number[6:14]} {number[14:]} 已登记",
            ("id_card", f"{number[:6]} {number[6:14]} {number[14:]}"),
        )
        add(f"号码{broken_check(number)}无效")
        add(f"流水号9{number}")
    for birth in ("19900230", "20991231", "18991231", "19901301"):
        add(f"身份证 {make_id(rng, birth=birth)} 作废")
    for region in ("000000", "990101", "160101"):
        add(f"身份证 {make_id(rng, region=region)} 作废")
    add(f"尾号小写 {make_id(rng, birth='19800101')[:-1]}x 的情况")
    for _ in range(25):
        prefix = rng.choice(["622202", "621700", "436742", "524047", "356895"])
        card = make_card(rng, prefix, rng.choice([16, 19]) if prefix[:2] == "62" else 16)
        add(f"卡号 {card} 到账", ("bank_card", card))
        grouped = " ".join(card[i : i + 4] for i in range(0, len(card), 4))
        add(f"card: {grouped}.", ("bank_card", grouped))
        add(f"卡号 {broken_check(card)} 错误")
        add(f"ref {card}12 archived")
    for _ in range(30):
        phone = make_phone(rng)
        add(f"联系电话{phone}。", ("mobile", phone))
        dashed = f"{phone[:3]}-{phone[3:7]}-{phone[7:]}"
        add(f"call +86 {dashed} now", ("mobile", f"+86 {dashed}"))
        add(
            f"手机 {phone[:3]} {phone[3:7]} {phone[7:]} 找我",
            ("mobile", f"{phone[:3]} {phone[3:7]} {phone[7:]}"),
        )
        add(f"编号{phone}{rng.randint(100, 999)}作废")
    add("电话0086-13800138000", ("mobile", "0086-13800138000"))
    add("订单号DD13800138000已发货")
    add("金额 13800138000.50 元")
    add("号码 12812345678 不是手机")
    names = ("zhang.san", "li_si", "wang+tag", "a1", "Service-Desk", "x", "ops.team.cn")
    domains = ("example.com", "corp.example.cn", "qq.com", "mail.example.org", "163.com")
    for _ in range(20):
        address = f"{rng.choice(names)}{rng.randint(1, 99)}@{rng.choice(domains)}"
        frame = rng.choice(("邮箱 {} 联系", "mail me at {}.", "<{}>", "发送至{}，谢谢"))
        add(frame.format(address), ("email", address))
    add("mail to ops@mail.corp.example.cn.", ("email", "ops@mail.corp.example.cn"))
    # find_pii keeps the longer of overlapping hits: the address, not the phone inside it
    add("QQ邮箱 13800138000@qq.com", ("email", "13800138000@qq.com"))
    for bad in (
        "a@b",
        "@example.com",
        "x@@example.com",
        "name@-bad.com",
        "a..b@example.com",
        ".ab@example.com",
        "user@example",
        "user@exa_mple.com",
    ):
        add(f"not an address: {bad} here")
    for _ in range(20):
        ip = ".".join(str(rng.randint(0, 255)) for _ in range(4))
        frame = rng.choice(("server at {}:8080 is up", "IP地址{}已封禁", "from {}.", "({})"))
        add(frame.format(ip), ("ipv4", ip))
    for bad in (
        "256.1.1.1",
        "1.2.3.4.5",
        "01.2.3.4",
        "v1.2.3.4",
        "1.2.3",
        "10.0.0.300",
        "1.2.3.4a",
        "192.168.1",
        "1.1.1.1.1.1",
    ):
        add(f"value {bad} here")
    for ip in (
        "2001:db8::1",
        "fe80::1ff:fe23:4567:890a",
        "::1",
        "2001:db8:0:0:1:0:0:1",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "::ffff:192.0.2.128",
        "ff02::2",
        "2001:db8:85a3::8a2e:370:7334",
        "fd00:abcd::12",
        "2408:8756:c52:1aec::1",
    ):
        add(f"IPv6 地址 {ip} 可达", ("ipv6", ip))
    for bad in (
        "12:30:45",
        "std::vector",
        "2001:db8::g1",
        "1:2:3",
        "1::2::3",
        "a:b",
        "2001:db8:85a3:0:0:8a2e:370:7334:1",
    ):
        add(f"see {bad} please")
    return cases


def clean_cases(rng: random.Random) -> list[dict[str, object]]:
    texts = [
        "订单号 202406150001234 已发货，预计3天内送达。",
        "您的快递单号为 SF1234567890123，请注意查收。",
        "京东订单 JD0012345678901 已签收。",
        "会议时间：2024-06-15 14:30，地点：三楼会议室。",
        "本月营收 1,234,567.89 元，同比增长 12.5%。",
        "Version 2.10.4 fixes the login bug; upgrade from 2.9.x.",
        "Windows build 10.0.19041.1 is supported.",
        "客服热线 400-123-4567，工作日 9:00-18:00。",
        "北京办公室电话 010-12345678 转 8001。",
        "The meeting is at 12:30:45 UTC on 2024/06/15.",
        "发票代码 044031900111，发票号码 12345678。",
        "产品型号 X200-PRO，价格 ¥3999。",
        "Invoice #INV-2024-000123 totals $1,299.00.",
        "Tracking number 1Z999AA10123456784 is in transit.",
        "我们的classic系列产品深受欢迎。",
        "Please review the assessment before Friday.",
        "ISBN 978-7-111-12345-6 的图书已上架。",
        "房间号 1208，入住日期 2024年6月15日。",
        "参考文献[12]第3.4.5节。",
        "坐标 39.9042, 116.4074 位于北京。",
    ]
    frames_zh = ["季度{}总结", "请于{}前提交", "会议纪要：{}", "{}已完成"]
    frames_en = ["please send the {} by friday", "the {} was approved", "{} looks good"]
    nouns_zh = ["销售报表", "项目计划", "预算申请", "合同草案", "客户反馈", "培训材料"]
    nouns_en = ["report", "invoice", "proposal", "budget", "schedule", "contract"]
    while len(texts) < 120:
        roll = rng.random()
        if roll < 0.35:
            texts.append(
                rng.choice(frames_zh).format(rng.choice(nouns_zh))
                + f"，编号 {rng.randint(1000, 99999)}。"
            )
        elif roll < 0.6:
            texts.append(
                rng.choice(frames_en).format(rng.choice(nouns_en))
                + f", ref {rng.randint(100000, 9999999)}."
            )
        elif roll < 0.75:
            texts.append(
                f"日期 {rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-"
                f"{rng.randint(1, 28):02d}，金额 {rng.randint(1, 99999)}."
                f"{rng.randint(0, 99):02d} 元"
            )
        elif roll < 0.85:
            texts.append(
                f"release {rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)} "
                f"shipped on {rng.randint(1, 12)}/{rng.randint(1, 28)}"
            )
        else:
            digits = "".join(rng.choice("0123456789") for _ in range(rng.choice([8, 10, 12, 14])))
            texts.append(f"工单 {digits} 处理中")
    return [{"text": text, "expect": []} for text in texts]


def main() -> None:
    rng = random.Random(SEED)
    for name, cases in (
        ("sensitive_words.jsonl", word_cases(rng)),
        ("pii.jsonl", pii_cases(rng)),
        ("clean_text.jsonl", clean_cases(rng)),
    ):
        with open(HERE / name, "w", encoding="utf-8") as handle:
            for case in cases:
                handle.write(json.dumps(case, ensure_ascii=False) + "\n")
        print(f"{name}: {len(cases)} cases")


if __name__ == "__main__":
    main()
