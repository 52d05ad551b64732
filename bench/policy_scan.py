"""Policy scan speed: keyword library build, whole-text scan throughput, streaming cost.

Everything is generated here from a fixed seed (no downloads):

  (1) build   a 10,000-keyword library (60% Chinese 2-4 characters, 40% English 4-10
              letters) compiled into ``WordMatcher`` (normalisation + Aho-Corasick automaton);
  (2) scan    ``Guard.apply`` with one ``WordDetector`` (mask) and the six built-in PII
              recognisers (mask) on about 1 MB (UTF-8) of mixed Chinese/English business text
              with a few hundred keyword and PII hits, in MB/s; side by side, in the same run:
              the bare ``ahocorasick_rs`` automaton on the normalised text, ``pyahocorasick``
              (when importable) on the same normalised text, and naive ``str.find`` per keyword
              and one ``re`` alternation, both on a 1,000-keyword subset;
  (3) stream  ``GuardStream.feed`` cost per chunk (µs) at chunk sizes 1, 4 and 16 characters,
              with the same detectors and with the keyword detector alone, on the first
              100 KB of the text.

Each timing is the best of ``--repeat`` runs (the machine is shared and noisy; the best run
is the one least disturbed).

    python bench/policy_scan.py [--keywords 10000] [--mb 1.0] [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ahocorasick_rs

from openautoglm.policy.normalize import normalize
from openautoglm.policy.recognizers import default_recognizers
from openautoglm.policy.scanner import Detector, Guard, PiiDetector, WordDetector
from openautoglm.policy.words import WordEntry, WordMatcher

SEED = 20240601
# Common CJK characters (a slice of the unified block) for filler text and keywords.
CJK = [chr(cp) for cp in range(0x4E00, 0x4E00 + 2500)]
LATIN = "abcdefghijklmnopqrstuvwxyz"
ENGLISH = [
    "the",
    "order",
    "has",
    "been",
    "shipped",
    "and",
    "will",
    "arrive",
    "within",
    "three",
    "working",
    "days",
    "please",
    "check",
    "your",
    "account",
    "for",
    "invoice",
    "our",
    "team",
    "reviewed",
    "quarterly",
    "revenue",
    "report",
    "customer",
    "service",
    "metrics",
    "improved",
    "after",
    "gateway",
    "update",
    "thanks",
    "patience",
    "we",
    "follow",
    "up",
    "with",
    "delivery",
    "schedule",
    "updated",
    "pricing",
    "next",
    "week",
]
PUNCT_CN = "，。、；：！？"


def make_keywords(count: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < count:
        if rng.random() < 0.6:
            words.add("".join(rng.choice(CJK) for _ in range(rng.randint(2, 4))))
        else:
            words.add("".join(rng.choice(LATIN) for _ in range(rng.randint(4, 10))))
    return sorted(words)


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        digits = body + check
        total = sum(
            (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 else d
            for i, d in enumerate(int(c) for c in reversed(digits))
        )
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def _pii_value(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return "1" + rng.choice("3589") + "".join(rng.choice("0123456789") for _ in range(9))
    if kind == 1:
        return f"user{rng.randint(1, 999)}@example.com"
    if kind == 2:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return _luhn_complete("622202" + "".join(rng.choice("0123456789") for _ in range(9)))


def make_text(size_bytes: int, keywords: list[str], rng: random.Random) -> str:
    """Mixed business text: 50/50 Chinese and English sentences, some numbers, some hits."""
    parts: list[str] = []
    size = 0
    while size < size_bytes:
        roll = rng.random()
        if roll < 0.5:
            sentence = "".join(rng.choice(CJK) for _ in range(rng.randint(8, 30)))
            sentence += rng.choice(PUNCT_CN)
        else:
            sentence = " ".join(rng.choice(ENGLISH) for _ in range(rng.randint(5, 15)))
            sentence = sentence.capitalize() + rng.choice([". ", ", ", "; "])
        if rng.random() < 0.08:  # numbers that must not hit: prices, dates, order numbers
            sentence += rng.choice(
                [
                    f"价格 {rng.randint(1, 9999)}.{rng.randint(0, 99):02d} 元，",
                    f"on {rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-"
                    f"{rng.randint(1, 28):02d} ",
                    f"订单号 {rng.randint(10**11, 10**13)}，",
                    f"version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)} ",
                ]
            )
        if rng.random() < 0.02:
            sentence += " " + rng.choice(keywords) + " "
        if rng.random() < 0.01:
            sentence += " " + _pii_value(rng) + " "
        parts.append(sentence)
        size += len(sentence.encode())
    return "".join(parts)


def best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def build_guard(matcher: WordMatcher) -> Guard:
    detectors: list[Detector] = [WordDetector("words", matcher, "mask")]
    detectors += [
        PiiDetector(f"pii-{name}", r, "mask") for name, r in default_recognizers().items()
    ]
    return Guard(detectors)


def scan_rows(
    text: str, keywords: list[str], matcher: WordMatcher, guard: Guard, repeat: int, subset: int
) -> list[dict[str, Any]]:
    size_mb = len(text.encode()) / 1e6
    normalised = normalize(text).text
    rows: list[dict[str, Any]] = []

    def add(name: str, seconds: float, hits: int, note: str = "") -> None:
        rows.append(
            {
                "name": name,
                "ms": seconds * 1e3,
                "mb_per_s": size_mb / seconds,
                "hits": hits,
                "note": note,
            }
        )

    result = guard.apply(text)
    add(
        "ours: Guard.apply (words + 6 PII)",
        best_of(repeat, lambda: guard.apply(text)),
        len(result.spans),
        "normalise + automaton + PII + masking",
    )
    add(
        "ours: WordMatcher.find only",
        best_of(repeat, lambda: matcher.find(text)),
        len(matcher.find(text)),
        "normalise + automaton + boundary rule",
    )
    add("ours: normalize only", best_of(repeat, lambda: normalize(text)), 0, "")
    automaton = ahocorasick_rs.AhoCorasick(
        [normalize(k).text for k in keywords], matchkind=ahocorasick_rs.MATCHKIND_STANDARD
    )
    add(
        "ahocorasick_rs on normalised text",
        best_of(repeat, lambda: automaton.find_matches_as_indexes(normalised, overlapping=True)),
        len(automaton.find_matches_as_indexes(normalised, overlapping=True)),
        "automaton alone, no normalisation or mapping",
    )
    try:
        import ahocorasick  # type: ignore[import-not-found]
    except ImportError:
        rows.append(
            {
                "name": "pyahocorasick",
                "ms": None,
                "mb_per_s": None,
                "hits": None,
                "note": "not installed (pip install pyahocorasick to compare)",
            }
        )
    else:
        pyac = ahocorasick.Automaton()
        for i, k in enumerate(keywords):
            pyac.add_word(normalize(k).text, i)
        pyac.make_automaton()
        add(
            "pyahocorasick on normalised text",
            best_of(repeat, lambda: list(pyac.iter(normalised))),
            len(list(pyac.iter(normalised))),
            "same keywords, same input",
        )
    few = [normalize(k).text for k in keywords[:subset]]

    def naive_find() -> int:
        found = 0
        for k in few:
            at = normalised.find(k)
            while at != -1:
                found += 1
                at = normalised.find(k, at + 1)
        return found

    add(
        f"naive str.find x {subset} keywords",
        best_of(max(1, repeat // 2), naive_find),
        naive_find(),
        f"{subset}-keyword subset only",
    )
    alternation = re.compile("|".join(map(re.escape, sorted(few, key=len, reverse=True))))
    add(
        f"re alternation of {subset} keywords",
        best_of(1, lambda: alternation.findall(normalised)),
        len(alternation.findall(normalised)),
        f"{subset}-keyword subset only, one run",
    )
    return rows


def stream_rows(text: str, guards: dict[str, Guard], repeat: int) -> list[dict[str, Any]]:
    rows = []
    for (label, guard), size in ((g, size) for g in guards.items() for size in (1, 4, 16)):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]

        def run(chunks: list[str] = chunks, guard: Guard = guard) -> None:
            stream = guard.stream()
            for chunk in chunks:
                stream.feed(chunk)
            stream.finish()

        seconds = best_of(repeat, run)
        rows.append(
            {
                "guard": label,
                "chunk_chars": size,
                "feeds": len(chunks),
                "us_per_feed": seconds / len(chunks) * 1e6,
                "chars_per_s": len(text) / seconds,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keywords", type=int, default=10_000)
    parser.add_argument("--mb", type=float, default=1.0, help="size of the scanned text")
    parser.add_argument("--subset", type=int, default=1_000, help="keywords for naive baselines")
    parser.add_argument("--stream-kb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rng = random.Random(SEED)
    keywords = make_keywords(args.keywords, rng)
    entries = [WordEntry(k, "zh" if not k.isascii() else "en") for k in keywords]
    build_s = best_of(3, lambda: WordMatcher(entries))
    matcher = WordMatcher(entries)
    guard = build_guard(matcher)
    text = make_text(int(args.mb * 1e6), keywords, rng)
    scans = scan_rows(text, keywords, matcher, guard, args.repeat, args.subset)
    stream_text = text.encode()[: args.stream_kb * 1000].decode(errors="ignore")
    guards = {"words + 6 PII": guard, "words only": Guard([WordDetector("w", matcher, "mask")])}
    streams = stream_rows(stream_text, guards, max(1, args.repeat // 2))
    report = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "build": {
            "keywords": len(entries),
            "seconds": build_s,
            "chinese_share": sum(not k.isascii() for k in keywords) / len(keywords),
        },
        "text": {"bytes": len(text.encode()), "chars": len(text)},
        "scan": scans,
        "stream": streams,
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def print_report(report: dict[str, Any]) -> None:
    build = report["build"]
    print(
        f"(1) build: {build['keywords']} keywords ({build['chinese_share']:.0%} Chinese) "
        f"in {build['seconds'] * 1e3:.0f} ms"
    )
    text = report["text"]
    print(f"(2) scan: {text['bytes'] / 1e6:.2f} MB, {text['chars']} characters")
    print(f"    {'what':<42} {'ms':>8} {'MB/s':>8} {'hits':>7}  note")
    for row in report["scan"]:
        if row["ms"] is None:
            print(f"    {row['name']:<42} {'-':>8} {'-':>8} {'-':>7}  {row['note']}")
        else:
            print(
                f"    {row['name']:<42} {row['ms']:>8.1f} {row['mb_per_s']:>8.1f} "
                f"{row['hits']:>7}  {row['note']}"
            )
    print("(3) stream: GuardStream.feed")
    print(f"    {'guard':<14} {'chunk chars':>11} {'feeds':>8} {'µs/feed':>8} {'chars/s':>10}")
    for row in report["stream"]:
        print(
            f"    {row['guard']:<14} {row['chunk_chars']:>11} {row['feeds']:>8} "
            f"{row['us_per_feed']:>8.2f} {row['chars_per_s']:>10.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
