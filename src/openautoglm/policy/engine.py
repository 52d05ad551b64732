"""Compiled policies: what the request path asks of the rules.

A :class:`CompiledDocument` is built once per stored version (keyword automata are built here,
never per request). An :class:`EffectivePolicy` joins the global document with a tenant's (tenant
rules add to global ones; the tenant's ``audit`` and ``lockout`` settings replace the global
ones) and caches one :class:`Guard` per (stage, model), so a request pays only for scanning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from openautoglm.core.errors import InvalidRequestError, PermissionDeniedError
from openautoglm.core.types import ContentPart, GenerationRequest, Message, SamplingParams
from openautoglm.policy.document import (
    Action,
    ContentMode,
    LatencyBudgetRule,
    LockoutConfig,
    MaskConfig,
    MaxPromptTokensRule,
    MaxTokensRule,
    ModelsRule,
    PiiRule,
    PolicyDocument,
    PolicyError,
    RegexRule,
    RegionsRule,
    Rule,
    Stage,
    WordsRule,
)
from openautoglm.policy.pii import MaskShape, Recognizer
from openautoglm.policy.recognizers import RegexRecognizer, default_recognizers
from openautoglm.policy.scanner import Detector, Guard, PiiDetector, Span, WordDetector
from openautoglm.policy.words import WordEntry, WordMatcher, load_library

DEFAULT_CONTENT_MODE: ContentMode = "hash"


@dataclass(frozen=True, slots=True)
class Decision:
    """One rule's verdict on one request, as recorded in the audit log."""

    rule: str
    action: Action
    stage: Stage
    category: str | None = None

    def as_dict(self) -> dict[str, str]:
        entry = {"rule": self.rule, "action": self.action, "stage": self.stage}
        if self.category:
            entry["category"] = self.category
        return entry


class PolicyViolation(InvalidRequestError):
    """A request refused by a rule (400). The message names the rule, never the matched words."""

    code = "policy_violation"

    def __init__(self, rule_id: str, what: str = "the request") -> None:
        super().__init__(f"{what} was blocked by policy rule '{rule_id}'", param=None)
        self.rule_id = rule_id


class KeySuspended(PermissionDeniedError):
    """A key suspended after repeated violations (403 with Retry-After)."""

    code = "key_suspended"


@dataclass(slots=True)
class InputVerdict:
    """The request after input rules (masked text, capped ``max_tokens``) and what they decided."""

    request: GenerationRequest
    decisions: list[Decision] = field(default_factory=list)
    regions: tuple[str, ...] | None = None
    budget_ms: int | None = None


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    detectors: tuple[Detector, ...] = ()


class CompiledDocument:
    """One scope's document with its detectors built."""

    def __init__(
        self,
        document: PolicyDocument,
        libraries_dir: Path | None = None,
        lines: Sequence[int | None] = (),
    ) -> None:
        self.document = document
        compiled = []
        for index, rule in enumerate(document.rules):
            try:
                compiled.append(_compile(rule, libraries_dir))
            except (PolicyError, ValueError) as exc:
                line = lines[index] if index < len(lines) else None
                reason = exc.reason if isinstance(exc, PolicyError) else str(exc)
                raise PolicyError(f"rules[{index}] ('{rule.id}'): {reason}", line) from exc
        self.rules = tuple(compiled)


def compile_document(
    document: PolicyDocument, libraries_dir: Path | None, lines: Sequence[int | None] = ()
) -> CompiledDocument:
    """Build a document's detectors; a missing library becomes a :class:`PolicyError`."""
    return CompiledDocument(document, libraries_dir, lines)


class EffectivePolicy:
    """The rules in force for one tenant: global plus the tenant's own."""

    def __init__(self, documents: Sequence[CompiledDocument], versions: dict[str, int]) -> None:
        self.versions = versions
        self._rules = tuple(compiled for document in documents for compiled in document.rules)
        self.content_mode: ContentMode = DEFAULT_CONTENT_MODE
        self.lockout: LockoutConfig | None = None
        for document in documents:  # later (tenant) documents override
            if document.document.audit is not None:
                self.content_mode = document.document.audit.content
            if document.document.lockout is not None:
                self.lockout = document.document.lockout
        self._guards: dict[tuple[Stage, str], Guard | None] = {}

    @property
    def is_empty(self) -> bool:
        return not self._rules

    def version_label(self) -> str:
        """``global@3,tenant@2``: which documents decided, for the audit log."""
        return ",".join(f"{scope}@{version}" for scope, version in sorted(self.versions.items()))

    def guard(self, stage: Stage, model: str) -> Guard | None:
        """The text guard for ``stage`` of calls to ``model`` (None when no text rule applies)."""
        key = (stage, model)
        if key not in self._guards:
            detectors = [
                detector
                for compiled in self._rules
                if compiled.detectors and compiled.rule.applies(stage, model)
                for detector in compiled.detectors
            ]

            self._guards[key] = Guard(detectors) if detectors else None
        return self._guards[key]

    def check_input(
        self, request: GenerationRequest, decisions: list[Decision] | None = None
    ) -> InputVerdict:
        """Apply every input rule to ``request``; raise :class:`PolicyViolation` on a block.

        Decisions go into ``decisions`` as they are made, so a refusal still has its record."""
        verdict = InputVerdict(request, decisions if decisions is not None else [])
        if not self._rules:
            return verdict
        model = request.model
        params = request.params
        for compiled in self._rules:
            rule = compiled.rule
            if not rule.applies("input", model):
                continue
            if isinstance(rule, ModelsRule) and not rule.permits(model):
                verdict.decisions.append(Decision(rule.id, "block", "input"))
                raise PolicyViolation(rule.id, f"model '{model}'")
            if isinstance(rule, RegionsRule):
                verdict.regions = _narrow(verdict.regions, rule.allow)
            elif isinstance(rule, LatencyBudgetRule):
                verdict.budget_ms = min(verdict.budget_ms or rule.budget_ms, rule.budget_ms)
            elif isinstance(rule, MaxTokensRule) and _over_cap(params, rule.limit):
                verdict.decisions.append(Decision(rule.id, rule.action, "input"))
                if rule.action == "block":
                    raise PolicyViolation(rule.id, f"max_tokens above {rule.limit}")
                if rule.action == "mask":
                    params = dataclasses.replace(params, max_tokens=rule.limit)
        guard = self.guard("input", model)
        if guard is not None:
            request = _scan_request(guard, request, verdict.decisions)
        if params is not request.params:
            request = dataclasses.replace(request, params=params)
        verdict.request = request
        return verdict

    def check_prompt_tokens(
        self, model: str, prompt_tokens: int, decisions: list[Decision]
    ) -> None:
        """Enforce ``max_prompt_tokens`` rules once the prompt has been counted."""
        for compiled in self._rules:
            rule = compiled.rule
            if (
                isinstance(rule, MaxPromptTokensRule)
                and rule.applies("input", model)
                and prompt_tokens > rule.limit
            ):
                decisions.append(Decision(rule.id, rule.action, "input"))
                if rule.action == "block":
                    raise PolicyViolation(
                        rule.id, f"a prompt of {prompt_tokens} tokens (limit {rule.limit})"
                    )

    def has_prompt_token_rules(self, model: str) -> bool:
        return any(
            isinstance(c.rule, MaxPromptTokensRule) and c.rule.applies("input", model)
            for c in self._rules
        )


def decisions_of(spans: Iterable[Span], stage: Stage) -> list[Decision]:
    """One decision per (rule, action, category) among ``spans``, in order of appearance."""
    seen: dict[tuple[str, str, str | None], Decision] = {}
    for span in spans:
        key = (span.rule_id, span.action, span.category)
        if key not in seen:
            seen[key] = Decision(span.rule_id, span.action, stage, span.category)
    return list(seen.values())


def _scan_request(
    guard: Guard, request: GenerationRequest, decisions: list[Decision]
) -> GenerationRequest:
    if request.kind != "chat":
        text = _scan_text(guard, request.prompt, decisions)
        return request if text is request.prompt else dataclasses.replace(request, prompt=text)
    messages = tuple(_scan_message(guard, message, decisions) for message in request.messages)
    if all(new is old for new, old in zip(messages, request.messages, strict=True)):
        return request
    return dataclasses.replace(request, messages=messages)


def _scan_message(guard: Guard, message: Message, decisions: list[Decision]) -> Message:
    if isinstance(message.content, str):
        text = _scan_text(guard, message.content, decisions)
        return message if text is message.content else dataclasses.replace(message, content=text)
    parts: list[ContentPart] = []
    for part in message.content:
        if part.type == "text" and part.text:
            text = _scan_text(guard, part.text, decisions)
            part = part if text is part.text else dataclasses.replace(part, text=text)
        parts.append(part)
    return dataclasses.replace(message, content=tuple(parts))


def _scan_text(guard: Guard, text: str, decisions: list[Decision]) -> str:
    if not text:
        return text
    result = guard.apply(text)
    if not result.spans:
        return text
    decisions.extend(decisions_of(result.spans, "input"))
    if result.blocked is not None:
        raise PolicyViolation(result.blocked.rule_id)
    return result.text


def _narrow(current: tuple[str, ...] | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    return allowed if current is None else tuple(r for r in current if r in allowed)


def _over_cap(params: SamplingParams, limit: int) -> bool:
    return params.max_tokens is None or params.max_tokens > limit


def _compile(rule: Rule, libraries_dir: Path | None) -> _Compiled:
    if isinstance(rule, WordsRule):
        matcher = WordMatcher(_word_entries(rule, libraries_dir), window=rule.window)
        return _Compiled(rule, (WordDetector(rule.id, matcher, rule.action, None),))
    if isinstance(rule, PiiRule):
        recognizers = default_recognizers()
        detectors = tuple(
            PiiDetector(rule.id, _shaped(recognizers[kind], rule.mask), rule.action)
            for kind in rule.kinds
        )
        return _Compiled(rule, detectors)
    if isinstance(rule, RegexRule):
        recognizer = RegexRecognizer(rule.id, rule.pattern, _shape(rule.mask))
        return _Compiled(rule, (PiiDetector(rule.id, recognizer, rule.action),))
    return _Compiled(rule)


def _word_entries(rule: WordsRule, libraries_dir: Path | None) -> list[WordEntry]:
    """Inline words (in ``rule.category``) plus the library's, filtered by ``categories``."""
    entries = [WordEntry(word, rule.category) for word in rule.words]
    if rule.library is not None:
        library = _library(rule.library, libraries_dir)
        if rule.categories is not None:
            library = [entry for entry in library if entry.category in rule.categories]
        entries.extend(library)
    if not entries:
        raise PolicyError(f"rule '{rule.id}' has no words (after the category filter)")
    return entries


def _library(name: str, libraries_dir: Path | None) -> list[WordEntry]:

    if libraries_dir is None:
        raise PolicyError(f"library '{name}' needs policy.libraries_dir to be configured")
    path = libraries_dir / name
    if not path.suffix:
        path = path.with_suffix(".txt")
    if not path.is_file():
        raise PolicyError(f"library '{name}' not found in {libraries_dir}")
    try:
        return load_library(path)
    except ValueError as exc:
        raise PolicyError(f"library '{name}': {exc}") from exc


def _shape(mask: MaskConfig) -> MaskShape:

    return MaskShape(keep_start=mask.keep_start, keep_end=mask.keep_end, char=mask.char)


def _shaped(recognizer: Recognizer, mask: MaskConfig | None) -> Recognizer:
    """The built-in ``recognizer`` with the rule's own mask shape, if it has one."""
    if mask is None:
        return recognizer
    shaped: Recognizer = type(recognizer)(shape=_shape(mask))  # type: ignore[call-arg]
    return shaped
