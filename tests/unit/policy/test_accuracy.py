"""Accuracy on the curated test set in ``cases/`` (run with ``-s`` to see the numbers).

Precision and recall are counted over (kind or category, original text) pairs: a detection
that is not expected is a false positive, an expected one that is not found a false negative.
The clean texts must not trigger any detector at all.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from openautoglm.policy.recognizers import default_recognizers, find_pii
from openautoglm.policy.words import WordMatcher, load_library

CASES = Path(__file__).resolve().parent / "cases"
MAX_YEAR = 2025  # the generator draws birth years up to 2005 and uses 2099 as "future"
MINIMUM = 0.98


def _load(name: str) -> list[dict[str, object]]:
    with open(CASES / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def matcher() -> WordMatcher:
    return WordMatcher(load_library(CASES / "keywords.txt"))


def _words(matcher: WordMatcher, text: str) -> Counter[tuple[str, str]]:
    return Counter((h.entry.category, text[h.start : h.end]) for h in matcher.find(text))


def _pii(text: str) -> Counter[tuple[str, str]]:
    recognizers = default_recognizers(MAX_YEAR).values()
    return Counter((h.kind, h.value) for h in find_pii(text, recognizers))


def _score(cases: list[dict[str, object]], detect: object) -> dict[str, Counter[str]]:
    """True positives, false positives and false negatives per kind."""
    counts: dict[str, Counter[str]] = {}
    for case in cases:
        expected = Counter(tuple(e) for e in case["expect"])  # type: ignore[attr-defined]
        found = detect(case["text"])  # type: ignore[operator]
        for key in expected | found:
            kind = counts.setdefault(key[0], Counter())
            kind["tp"] += min(expected[key], found[key])
            kind["fp"] += max(0, found[key] - expected[key])
            kind["fn"] += max(0, expected[key] - found[key])
    return counts


def _ratios(counts: Counter[str]) -> tuple[float, float]:
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / (tp + fn) if tp + fn else 1.0)


def _report(group: str, per_kind: dict[str, Counter[str]]) -> tuple[float, float]:
    total: Counter[str] = Counter()
    for kind, counts in sorted(per_kind.items()):
        total.update(counts)
        precision, recall = _ratios(counts)
        print(
            f"  {group:<6} {kind:<10} P={precision:.3f} R={recall:.3f} "
            f"(tp={counts['tp']} fp={counts['fp']} fn={counts['fn']})"
        )
    precision, recall = _ratios(total)
    print(
        f"  {group:<6} {'ALL':<10} P={precision:.3f} R={recall:.3f} "
        f"(tp={total['tp']} fp={total['fp']} fn={total['fn']})"
    )
    return precision, recall


def test_case_files_are_big_enough() -> None:
    assert len(_load("sensitive_words.jsonl")) >= 200
    assert len(_load("pii.jsonl")) >= 200
    assert len(_load("clean_text.jsonl")) >= 100


def test_sensitive_words(matcher: WordMatcher) -> None:
    cases = _load("sensitive_words.jsonl")
    precision, recall = _report("words", _score(cases, lambda t: _words(matcher, t)))
    assert precision >= MINIMUM and recall >= MINIMUM


def test_pii() -> None:
    cases = _load("pii.jsonl")
    per_kind = _score(cases, _pii)
    precision, recall = _report("pii", per_kind)
    assert precision >= MINIMUM and recall >= MINIMUM
    for kind, counts in per_kind.items():
        assert min(_ratios(counts)) >= MINIMUM, kind


def test_clean_text_triggers_nothing(matcher: WordMatcher) -> None:
    cases = _load("clean_text.jsonl")
    fired = [
        (case["text"], _words(matcher, case["text"]) + _pii(case["text"]))  # type: ignore[arg-type]
        for case in cases
    ]
    fired = [(text, found) for text, found in fired if found]
    rate = len(fired) / len(cases)
    print(f"  clean  texts={len(cases)} with any detection={len(fired)} (rate {rate:.3f})")
    assert fired == []
