"""Evaluation sets for validating a model version: parsing, local scorers and the judge's wire.

A dataset is JSON Lines (or the same objects already parsed), one item a line::

    {"id": "q1", "prompt": "2+2?", "expected": "4", "scorer": "exact"}
    {"messages": [{"role": "user", "content": "..."}], "expected": {...}, "scorer": "json_schema"}

Invariants: a parsed :class:`EvalItem` is always scorable — it has exactly one of ``prompt`` and
``messages``, an ``expected`` of the shape its scorer needs, options its scorer knows, a regex
that compiles and a JSON Schema that is valid. Ids are unique within a dataset; an item without
one is named by its 1-based position. Every refusal is an :class:`InvalidRequestError` with
``param="dataset"`` whose message names the line (or item) number and the field.

Scorer defaults: ``exact`` strips surrounding whitespace from both sides and is case-sensitive;
``contains`` is case-insensitive (answers vary in capitalisation far more than in content);
both accept ``{"case_sensitive": bool}``. ``regex`` uses :func:`re.search` with optional
``{"flags": "ism"}``. ``json_schema`` accepts the answer as bare JSON or inside a fenced code
block, and checks ``format`` keywords too. ``judge`` items are graded by another model through a
:class:`Judge` (``registry/judging.py`` builds its prompt and reads its reply).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import jsonschema  # type: ignore[import-untyped, unused-ignore]
from referencing.exceptions import Unresolvable

from openautoglm.core.errors import InvalidRequestError

MAX_ITEMS = 10_000
"""The most items one evaluation set may hold."""

ScorerName = Literal["exact", "contains", "regex", "json_schema", "judge"]
SCORERS: tuple[ScorerName, ...] = get_args(ScorerName)

_ITEM_FIELDS = (
    "id", "prompt", "messages", "expected", "scorer", "options", "max_tokens", "temperature",
)  # fmt: skip
_ROLES = ("system", "user", "assistant")
_OPTIONS: dict[ScorerName, tuple[str, ...]] = {
    "exact": ("case_sensitive",),
    "contains": ("case_sensitive",),
    "regex": ("flags",),
    "json_schema": (),
    "judge": (),
}
_REGEX_FLAGS = {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE}
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class ChatMessage:
    """One turn of an item's conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class EvalItem:
    """One question of an evaluation set, with how to score the answer."""

    id: str
    expected: Any
    scorer: ScorerName = "exact"
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    temperature: float | None = None

    def chat_messages(self) -> list[dict[str, str]]:
        """The conversation to send: ``messages`` as given, or ``prompt`` as one user turn."""
        if self.prompt is not None:
            return [{"role": "user", "content": self.prompt}]
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def as_dict(self) -> dict[str, Any]:
        """The item as a dataset line; :func:`parse_items` reads it back to an equal item."""
        data: dict[str, Any] = {"id": self.id}
        if self.prompt is not None:
            data["prompt"] = self.prompt
        else:
            data["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        data["expected"] = self.expected
        data["scorer"] = self.scorer
        if self.options:
            data["options"] = dict(self.options)
        if self.max_tokens is not None:
            data["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            data["temperature"] = self.temperature
        return data


@dataclass(frozen=True)
class Score:
    """Whether one answer passed, and why not (or the judge's reason)."""

    passed: bool
    detail: str | None = None


class Judge(Protocol):
    """Grades a ``judge`` item's answer, usually by asking another model."""

    async def __call__(self, item: EvalItem, answer: str) -> Score: ...


# -- parsing -----------------------------------------------------------------------------------


def parse_dataset(lines: Iterable[str]) -> list[EvalItem]:
    """Parse a JSON Lines dataset; blank lines are skipped but still counted in line numbers."""
    objects: list[tuple[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        if len(objects) == MAX_ITEMS:
            raise _refuse(f"{where}: the dataset has more than {MAX_ITEMS} items")
        try:
            # Editors on Windows often save UTF-8 with a byte-order mark.
            objects.append(
                (where, json.loads(line.removeprefix("\ufeff") if number == 1 else line))
            )
        except json.JSONDecodeError as exc:
            raise _refuse(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    return _build(objects)


def parse_items(items: Sequence[Mapping[str, Any]]) -> list[EvalItem]:
    """Parse dataset items that are already decoded JSON objects; errors name ``item N``."""
    if len(items) > MAX_ITEMS:
        raise _refuse(f"the dataset has {len(items)} items, more than {MAX_ITEMS}")
    return _build([(f"item {number}", obj) for number, obj in enumerate(items, start=1)])


def dataset_digest(items: Sequence[EvalItem]) -> str:
    """SHA-256 (hex) of the items' canonical JSON: equal datasets give equal digests."""
    lines = [item.as_dict() for item in items]
    canonical = json.dumps(lines, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _build(objects: list[tuple[str, Any]]) -> list[EvalItem]:
    if not objects:
        raise _refuse("the dataset has no items")
    items: list[EvalItem] = []
    seen: dict[str, str] = {}
    for position, (where, obj) in enumerate(objects, start=1):
        item = _parse_item(obj, where, position)
        if item.id in seen:
            raise _refuse(f"{where}: field 'id' {item.id!r} is already used by {seen[item.id]}")
        seen[item.id] = where
        items.append(item)
    return items


def _parse_item(obj: Any, where: str, position: int) -> EvalItem:
    if not isinstance(obj, dict):
        raise _refuse(f"{where}: must be a JSON object")
    unknown = sorted(set(obj) - set(_ITEM_FIELDS))
    if unknown:
        raise _refuse(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(_ITEM_FIELDS)})")
    scorer = obj.get("scorer", "exact")
    if scorer not in SCORERS:
        raise _refuse(f"{where}: field 'scorer' must be one of {', '.join(SCORERS)}")
    if "expected" not in obj:
        raise _refuse(f"{where}: field 'expected' is required")
    prompt, messages = _parse_input(obj, where)
    options = _parse_options(obj.get("options", {}), scorer, where)
    _check_expected(obj["expected"], scorer, options, where)
    return EvalItem(
        id=_parse_id(obj.get("id"), where, position),
        expected=obj["expected"],
        scorer=scorer,
        prompt=prompt,
        messages=messages,
        options=options,
        max_tokens=_parse_max_tokens(obj.get("max_tokens"), where),
        temperature=_parse_temperature(obj.get("temperature"), where),
    )


def _parse_id(value: Any, where: str, position: int) -> str:
    if value is None:
        return str(position)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _refuse(f"{where}: field 'id' must be a non-empty string")
    return value


def _parse_input(obj: dict[str, Any], where: str) -> tuple[str | None, tuple[ChatMessage, ...]]:
    if ("prompt" in obj) == ("messages" in obj):
        raise _refuse(f"{where}: exactly one of fields 'prompt' and 'messages' is required")
    if "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise _refuse(f"{where}: field 'prompt' must be a non-empty string")
        return prompt, ()
    raw = obj["messages"]
    if not isinstance(raw, list) or not raw:
        raise _refuse(f"{where}: field 'messages' must be a non-empty list")
    messages: list[ChatMessage] = []
    for index, message in enumerate(raw):
        field_name = f"messages[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise _refuse(f"{where}: field '{field_name}' must be {{'role', 'content'}}")
        if message["role"] not in _ROLES:
            raise _refuse(f"{where}: field '{field_name}.role' must be one of {', '.join(_ROLES)}")
        if not isinstance(message["content"], str):
            raise _refuse(f"{where}: field '{field_name}.content' must be a string")
        messages.append(ChatMessage(message["role"], message["content"]))
    return None, tuple(messages)


def _parse_options(raw: Any, scorer: ScorerName, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _refuse(f"{where}: field 'options' must be a JSON object")
    allowed = _OPTIONS[scorer]
    for key, value in raw.items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise _refuse(
                f"{where}: field 'options.{key}' is not known to scorer {scorer!r} "
                f"(allowed: {known})"
            )
        if key == "case_sensitive" and not isinstance(value, bool):
            raise _refuse(f"{where}: field 'options.case_sensitive' must be true or false")
        if key == "flags" and (not isinstance(value, str) or set(value) - set(_REGEX_FLAGS)):
            raise _refuse(f"{where}: field 'options.flags' must be letters from 'ism'")
    return dict(raw)


def _check_expected(expected: Any, scorer: ScorerName, options: dict[str, Any], where: str) -> None:
    if scorer == "json_schema":
        if not isinstance(expected, dict):
            raise _refuse(f"{where}: field 'expected' must be a JSON Schema object")
        problem = _schema_problem(expected)
        if problem:
            raise _refuse(f"{where}: field 'expected' is not a valid JSON Schema: {problem}")
        return
    if not isinstance(expected, str) or (scorer != "exact" and not expected.strip()):
        raise _refuse(f"{where}: field 'expected' must be a non-empty string for {scorer!r}")
    if scorer == "regex":
        try:
            re.compile(expected, _regex_flags(options))
        except re.error as exc:
            raise _refuse(f"{where}: field 'expected' is not a valid regex: {exc}") from None


def _schema_problem(schema: dict[str, Any]) -> str | None:
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return f"{exc.message} at {exc.json_path}"
    remote = _remote_ref(schema)
    # jsonschema never fetches remote refs; refusing them here beats failing every answer later.
    return (
        f"$ref {remote!r} is not local to the schema (refs must start with '#')" if remote else None
    )


def _remote_ref(node: Any) -> str | None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                if not value.startswith("#"):
                    return value
            elif (found := _remote_ref(value)) is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            if (found := _remote_ref(value)) is not None:
                return found
    return None


def _parse_max_tokens(value: Any, where: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise _refuse(f"{where}: field 'max_tokens' must be an integer > 0")
    return value


def _parse_temperature(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 2:
        raise _refuse(f"{where}: field 'temperature' must be a number from 0 to 2")
    return float(value)


def _refuse(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="dataset")


# -- local scorers -----------------------------------------------------------------------------


def score(item: EvalItem, answer_text: str) -> Score:
    """Score an answer locally; ``judge`` items cannot be, and raise :class:`ValueError`."""
    if item.scorer == "exact":
        expected, answer = item.expected.strip(), answer_text.strip()
        if not item.options.get("case_sensitive", True):
            expected, answer = expected.casefold(), answer.casefold()
        if answer == expected:
            return Score(True)
        got = clip(answer_text.strip())
        return Score(False, f"expected {clip(item.expected.strip())!r}, got {got!r}")
    if item.scorer == "contains":
        expected, answer = item.expected, answer_text
        if not item.options.get("case_sensitive", False):
            expected, answer = expected.casefold(), answer.casefold()
        if expected in answer:
            return Score(True)
        return Score(False, f"answer does not contain {clip(item.expected)!r}")
    if item.scorer == "regex":
        if re.search(item.expected, answer_text, _regex_flags(item.options)):
            return Score(True)
        return Score(False, f"answer does not match /{clip(item.expected)}/")
    if item.scorer == "json_schema":
        return _score_json_schema(item.expected, answer_text)
    raise ValueError(f"item {item.id!r} uses scorer {item.scorer!r}, which needs a Judge")


def _score_json_schema(schema: dict[str, Any], answer_text: str) -> Score:
    try:
        instance = extract_json(answer_text)
    except ValueError as exc:
        return Score(False, f"answer is not JSON: {exc}")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    except Unresolvable as exc:
        return Score(False, f"schema could not be applied: {exc}")
    if error is None:
        return Score(True)
    return Score(False, f"at {error.json_path}: {clip(error.message, 200)}")


def extract_json(text: str) -> Any:
    """Decode ``text`` as JSON, or else the first fenced code block in it; ValueError if neither."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fence = _FENCE.search(text)
        if fence is None:
            raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    try:
        return json.loads(fence.group(1))
    except json.JSONDecodeError as exc:
        raise ValueError(f"fenced block: {exc.msg} at line {exc.lineno}") from None


def _regex_flags(options: Mapping[str, Any]) -> int:
    flags = 0
    for letter in options.get("flags", ""):
        flags |= _REGEX_FLAGS[letter]
    return flags


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
