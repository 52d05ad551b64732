"""Policy documents: parsed whole or refused whole, with the line and the reason."""

from __future__ import annotations

import pytest

from openautoglm.policy.document import (
    MaxTokensRule,
    ModelsRule,
    PiiRule,
    PolicyError,
    WordsRule,
    parse_policy,
)

GOOD = """\
description: baseline
audit: {content: masked}
lockout: {violations: 3, window_s: 60, suspend_s: 600}
rules:
  - id: no-gambling
    type: words
    words: ["赌博", "online casino", "网络&赌场"]
    category: gambling
  - id: phones
    type: pii
    kinds: [mobile, id_card]
    action: mask
    apply_to: output
  - id: models
    type: models
    deny: ["echo-b*"]
  - id: cap
    type: max_tokens
    limit: 256
"""


def test_a_valid_document_parses_with_defaults() -> None:
    document = parse_policy(GOOD)
    words, pii, models, cap = document.rules
    assert isinstance(words, WordsRule) and words.action == "block" and words.apply_to == "both"
    assert words.words == ("赌博", "online casino", "网络&赌场")
    assert isinstance(pii, PiiRule) and pii.kinds == ("mobile", "id_card")
    assert isinstance(models, ModelsRule)
    assert models.permits("echo") and not models.permits("echo-broken")
    assert isinstance(cap, MaxTokensRule) and cap.action == "mask"
    assert document.audit is not None and document.audit.content == "masked"
    assert document.lockout is not None and document.lockout.violations == 3


def test_rules_apply_by_stage_and_model_glob() -> None:
    rule = WordsRule(id="r", type="words", words=("x",), apply_to="output", models=("glm-*",))
    assert rule.applies("output", "glm-4")
    assert not rule.applies("input", "glm-4")
    assert not rule.applies("output", "qwen")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("rules:\n  - id: a\n    type: words\n    words: [x]\n    action: destroy\n", 5, "action"),
        ("rules:\n  - id: a\n    type: wordz\n", 3, "type must be one of"),
        (
            "rules:\n  - id: a\n    type: words\n    words: [x]\n  - id: a\n    type: words\n"
            "    words: [y]\n",
            5,
            "used twice",
        ),
        ("rules:\n  - id: r\n    type: regex\n    pattern: '(unclosed'\n", 4, "does not compile"),
        ("rules:\n  - id: r\n    type: regex\n    pattern: 'a*'\n", 4, "empty string"),
        ("rules: [\n", 2, "not valid YAML"),
        ("lockout: {violations: 0}\n", 1, "lockout.violations"),
        ("rules:\n  - id: p\n    type: pii\n    kinds: [passport]\n", 4, "kinds"),
        ("rules:\n  - id: w\n    type: words\n    words: ['  ']\n", 4, "empty"),
        ("surprise: 1\n", 1, "surprise"),
        ("- just\n- a list\n", 1, "mapping"),
        ("rules:\n  - id: 'bad id!'\n    type: words\n    words: [x]\n", 2, "id"),
    ],
)
def test_invalid_documents_name_the_line_and_reason(text: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert caught.value.line == line, str(caught.value)
    assert fragment in str(caught.value)


def test_an_empty_document_is_an_empty_policy() -> None:
    assert parse_policy("").rules == ()
