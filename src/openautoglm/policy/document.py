"""Policy documents: the YAML an operator writes, parsed and validated with line numbers.

A document is refused whole when any part is wrong; :class:`PolicyError` names the line and the
reason, so ``autoglm policies apply`` can point at it. Example::

    description: ACME baseline
    audit: {content: masked}
    lockout: {violations: 5, window_s: 600, suspend_s: 3600}
    rules:
      - id: no-gambling
        type: words
        words: ["赌博", "online casino", "网络&赌场"]
        category: gambling
        action: block
      - id: phones
        type: pii
        kinds: [mobile, id_card]
        action: mask
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

Action = Literal["block", "mask", "flag"]
Stage = Literal["input", "output"]
ContentMode = Literal["none", "hash", "masked", "full"]
PiiKind = Literal["mobile", "id_card", "bank_card", "email", "ipv4", "ipv6"]
RuleId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


class PolicyError(ValueError):
    """A policy document that cannot be used; ``line`` is 1-based when known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line is not None else reason)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """What every rule has: an id, where it applies, what it does, and to which models."""

    id: RuleId
    description: str | None = None
    apply_to: Literal["input", "output", "both"] = "both"
    action: Action = "block"
    models: tuple[str, ...] = Field(
        default=("*",), description="model names or glob patterns the rule covers"
    )

    def applies(self, stage: Stage, model: str) -> bool:
        return self.apply_to in (stage, "both") and any(
            fnmatch.fnmatchcase(model, pattern) for pattern in self.models
        )


class MaskConfig(_Strict):
    keep_start: int = Field(default=3, ge=0, le=64)
    keep_end: int = Field(default=4, ge=0, le=64)
    char: str = Field(default="*", min_length=1, max_length=1)


class WordsRule(Rule):
    """Sensitive words: inline ``words`` and/or a ``library`` file, matched after normalisation.
    ``A&B``: both within ``window`` characters; ``A~C``: A without C nearby."""

    type: Literal["words"]
    words: tuple[str, ...] = ()
    library: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    category: str = "default"
    categories: tuple[str, ...] | None = Field(
        default=None, description="only these categories of the library (inline words stay)"
    )
    window: int = Field(default=32, ge=1, le=512)

    @model_validator(mode="after")
    def _has_words(self) -> WordsRule:
        if not self.words and self.library is None:
            raise ValueError("a words rule needs 'words' or a 'library'")
        return self

    @field_validator("words")
    @classmethod
    def _no_empty_words(cls, words: tuple[str, ...]) -> tuple[str, ...]:
        for index, word in enumerate(words):
            if not word.strip():
                raise ValueError(f"words[{index}] is empty")
        return words


class PiiRule(Rule):
    type: Literal["pii"]
    kinds: tuple[PiiKind, ...] = Field(min_length=1)
    mask: MaskConfig | None = None


class RegexRule(Rule):
    type: Literal["regex"]
    pattern: str = Field(min_length=1, max_length=2000)
    mask: MaskConfig = Field(default_factory=lambda: MaskConfig(keep_start=0, keep_end=0))

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from exc
        if compiled.match(""):
            raise ValueError("pattern matches the empty string")
        return pattern


class ModelsRule(Rule):
    """Model allow/deny lists (glob patterns); always blocks."""

    type: Literal["models"]
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()

    def permits(self, model: str) -> bool:
        if any(fnmatch.fnmatchcase(model, pattern) for pattern in self.deny):
            return False
        return self.allow is None or any(
            fnmatch.fnmatchcase(model, pattern) for pattern in self.allow
        )


class MaxPromptTokensRule(Rule):
    type: Literal["max_prompt_tokens"]
    limit: int = Field(ge=1)


class MaxTokensRule(Rule):
    """Caps ``max_tokens``: ``mask`` lowers it to the limit, ``block`` refuses, ``flag`` notes."""

    type: Literal["max_tokens"]
    limit: int = Field(ge=1)
    action: Action = "mask"


class RegionsRule(Rule):
    """Requests are served only by instances in these regions."""

    type: Literal["regions"]
    allow: tuple[str, ...] = Field(min_length=1)


class LatencyBudgetRule(Rule):
    """The request's deadline: past it the call is cancelled (504, or an error event)."""

    type: Literal["latency_budget"]
    budget_ms: int = Field(ge=1, le=3_600_000)


AnyRule = (
    WordsRule
    | PiiRule
    | RegexRule
    | ModelsRule
    | MaxPromptTokensRule
    | MaxTokensRule
    | RegionsRule
    | LatencyBudgetRule
)
RULE_TYPES: dict[str, type[Rule]] = {
    "words": WordsRule,
    "pii": PiiRule,
    "regex": RegexRule,
    "models": ModelsRule,
    "max_prompt_tokens": MaxPromptTokensRule,
    "max_tokens": MaxTokensRule,
    "regions": RegionsRule,
    "latency_budget": LatencyBudgetRule,
}


class AuditConfig(_Strict):
    content: ContentMode = Field(
        default="hash", description="what the audit log keeps of prompts and answers"
    )


class LockoutConfig(_Strict):
    """``violations`` blocked requests within ``window_s`` suspend the key for ``suspend_s``."""

    violations: int = Field(ge=1, le=1_000_000)
    window_s: int = Field(default=600, ge=1)
    suspend_s: int = Field(default=3600, ge=1)


class PolicyDocument(_Strict):
    """One scope's policy (global, or a tenant's, which adds to the global one)."""

    description: str | None = None
    audit: AuditConfig | None = None
    lockout: LockoutConfig | None = None
    rules: tuple[AnyRule, ...] = ()


def parse_policy(text: str) -> PolicyDocument:
    """Parse and validate a YAML policy; raise :class:`PolicyError` naming the line."""
    return parse_policy_with_lines(text)[0]


def parse_policy_with_lines(text: str) -> tuple[PolicyDocument, tuple[int | None, ...]]:
    """:func:`parse_policy`, plus the line of each rule (to place later compile errors)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise PolicyError(f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError("a policy document is a mapping (description, audit, lockout, rules)", 1)
    raw_rules = data.get("rules") or []
    if not isinstance(raw_rules, list):
        raise PolicyError("'rules' must be a list", _line_of(root, ("rules",)))
    rules = [_parse_rule(raw, index, root) for index, raw in enumerate(raw_rules)]
    _refuse_duplicate_ids(rules, root)
    try:
        document = PolicyDocument.model_validate({**data, "rules": rules})
    except ValidationError as exc:
        raise _located(exc, (), root) from exc
    return document, tuple(_line_of(root, ("rules", i)) for i in range(len(rules)))


def _parse_rule(raw: Any, index: int, root: yaml.Node | None) -> Rule:
    where = ("rules", index)
    if not isinstance(raw, dict):
        raise PolicyError(f"rules[{index}] must be a mapping", _line_of(root, where))
    kind = raw.get("type")
    model = RULE_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(RULE_TYPES)
        raise PolicyError(
            f"rules[{index}].type must be one of: {known} (got {kind!r})",
            _line_of(root, (*where, "type")),
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _located(exc, where, root) from exc


def _refuse_duplicate_ids(rules: Sequence[Rule], root: yaml.Node | None) -> None:
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.id in seen:
            raise PolicyError(
                f"rules[{index}].id '{rule.id}' is used twice", _line_of(root, ("rules", index))
            )
        seen.add(rule.id)


def _located(
    exc: ValidationError, prefix: tuple[str | int, ...], root: yaml.Node | None
) -> Exception:
    first = exc.errors()[0]
    location = (*prefix, *first.get("loc", ()))
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)
    field = path.lstrip(".") or "document"
    return PolicyError(f"{field}: {first.get('msg', 'invalid')}", _line_of(root, location))


def _line_of(root: yaml.Node | None, location: Sequence[str | int]) -> int | None:
    """The 1-based line of the deepest YAML node along ``location`` that exists."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in location:
        child = _child(node, part)
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                found: yaml.Node = value
                return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child
    return None
