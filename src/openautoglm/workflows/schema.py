"""The shape of a workflow document: the keys of each task type and the checks of each value.

:mod:`~openautoglm.workflows.definition` assembles specs; this module answers "is this value
right for this key?" and raises :class:`WorkflowError` naming the field (``param``) when it is
not. Type-specific keys are listed in :data:`TASK_FIELDS`; unknown keys are refused with the
closest allowed one suggested. Every template is parsed here, so a spec never holds one that
cannot render for syntax reasons.
"""

from __future__ import annotations

import copy
import difflib
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from openautoglm.core.errors import InvalidRequestError
from openautoglm.workflows import templates

TASK_TYPES = ("llm", "http", "python", "branch", "map", "approval")
MAP_INNER_TYPES = ("llm", "http", "python")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
MESSAGE_ROLES = ("system", "user", "assistant")
DEFAULT_MAP_PARALLEL = 4
_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
# type -> key -> (kind of value, required); each kind is checked by _check_field
TASK_FIELDS: Mapping[str, Mapping[str, tuple[str, bool]]] = {
    "llm": {
        "model": ("text", True),
        "prompt": ("template", False),
        "messages": ("messages", False),
        "system": ("template", False),
        "max_tokens": ("count", False),
        "temperature": ("temperature", False),
    },
    "http": {
        "url": ("template", True),
        "method": ("method", False),
        "headers": ("templates", False),
        "json": ("templates", False),
        "body": ("template", False),
        "expect_status": ("statuses", False),
    },
    "python": {"callable": ("callable", True), "args": ("templates", False)},
    "branch": {"cases": ("cases", True), "default": ("ids", False)},
    "map": {"over": ("template", True), "max_parallel": ("count", False), "task": ("task", True)},
    "approval": {"message": ("template", False)},
}


class WorkflowError(InvalidRequestError):
    """A workflow definition or input that cannot be used; ``param`` names the field."""

    code = "invalid_workflow"


def fail(message: str, param: str | None = None) -> NoReturn:
    """Raise :class:`WorkflowError`."""
    raise WorkflowError(message, param=param)


def task_config(kind: str, task: Mapping[str, Any], label: str, where: str) -> dict[str, Any]:
    """The type-specific keys of a task, checked, normalised and with their defaults filled.

    ``label`` names the task in messages (``task 'fetch'``), ``where`` is its param prefix
    (``tasks[0]``). Keys outside :data:`TASK_FIELDS` are ignored here: the caller refuses them.
    """
    config: dict[str, Any] = {}
    for key, (value_kind, required) in TASK_FIELDS[kind].items():
        if task.get(key) is None:
            if required:
                fail(f"{label} ({kind}) needs '{key}'", f"{where}.{key}")
            continue
        config[key] = _check_field(value_kind, task[key], f"{label}: '{key}'", f"{where}.{key}")
    if kind == "llm" and ("prompt" in config) == ("messages" in config):
        fail(f"{label} (llm) needs exactly one of 'prompt' and 'messages'", f"{where}.prompt")
    if kind == "http":
        config.setdefault("method", "GET")
        if "json" in config and "body" in config:
            fail(f"{label} (http) takes 'json' or 'body', not both", f"{where}.body")
    if kind == "map":
        config.setdefault("max_parallel", DEFAULT_MAP_PARALLEL)
    return config


def _check_field(kind: str, value: Any, label: str, where: str) -> Any:
    if kind == "text" and not (isinstance(value, str) and value):
        fail(f"{label} must be a non-empty string", where)
    elif kind in ("template", "templates"):
        if kind == "template" and not isinstance(value, str):
            fail(f"{label} must be a string (a template)", where)
        check_templates(value, label, where)
    elif kind == "count":
        check_count(value, label, where)
    elif kind == "temperature" and not (is_type(value, "number") and 0 <= value <= 2):
        fail(f"{label} must be a number from 0 to 2", where)
    elif kind == "method":
        if not isinstance(value, str) or value.upper() not in HTTP_METHODS:
            fail(f"{label} must be one of {', '.join(HTTP_METHODS)}", where)
        return value.upper()
    elif kind == "statuses":
        statuses = value if isinstance(value, list) else [value]
        if not statuses or not all(is_type(s, "integer") and 100 <= s <= 599 for s in statuses):
            fail(f"{label} must be a list of HTTP status codes (100-599)", where)
        return list(statuses)
    elif kind == "callable" and not (isinstance(value, str) and _CALLABLE.fullmatch(value)):
        fail(f"{label} must name a function as 'package.module:function'", where)
    elif kind == "ids":
        return task_ids(value, label, where)
    elif kind == "messages":
        return _messages(value, label, where)
    elif kind == "cases":
        return _cases(value, label, where)
    elif kind == "task":
        inner = mapping(value, where)
        inner_kind = inner.get("type")
        if inner_kind not in MAP_INNER_TYPES:
            fail(f"{label} needs a type, one of {', '.join(MAP_INNER_TYPES)}", f"{where}.type")
        refuse_unknown(inner, ("type", *TASK_FIELDS[inner_kind]), label, where)
        return {"type": inner_kind, **task_config(inner_kind, inner, label, where)}
    return copy.deepcopy(value)


def _messages(value: Any, label: str, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        fail(f"{label} must be a non-empty list of {{role, content}}", where)
    for position, raw in enumerate(value):
        at, name = f"{where}[{position}]", f"{label}[{position}]"
        message = mapping(raw, at)
        refuse_unknown(message, ("role", "content"), name, at)
        if message.get("role") not in MESSAGE_ROLES:
            fail(f"{name}: 'role' must be one of {', '.join(MESSAGE_ROLES)}", f"{at}.role")
        if not isinstance(message.get("content"), str):
            fail(f"{name}: 'content' must be a string", f"{at}.content")
        check_templates(message["content"], name, f"{at}.content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _cases(value: Any, label: str, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        fail(f"{label} must be a non-empty list of {{when, then}}", where)
    cases = []
    for position, raw in enumerate(value):
        at, name = f"{where}[{position}]", f"{label}[{position}]"
        case = mapping(raw, at)
        refuse_unknown(case, ("when", "then"), name, at)
        when = case.get("when")
        if not isinstance(when, str) or not when.strip() or "{{" in when:
            fail(f"{name}: 'when' must be a bare expression, without {{{{ }}}}", f"{at}.when")
        try:
            templates.check_expression(when)
        except templates.TemplateError as exc:
            fail(f"{name}: 'when' is not a valid expression: {exc}", f"{at}.when")
        cases.append({"when": when, "then": task_ids(case.get("then"), name, f"{at}.then")})
    return cases


def callable_path(function: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a function a worker can import by that name after a restart.

    Refuses what cannot be found again by name: lambdas, nested functions, partials and bound
    methods of instances.
    """
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    target: Any = sys.modules.get(module) if isinstance(module, str) else None
    for part in qualname.split(".") if isinstance(qualname, str) else ["<unnamed>"]:
        target = getattr(target, part, None)
    if target is None or target != function:
        shown = qualname if isinstance(qualname, str) else repr(function)
        fail(
            f"{shown} cannot be imported by name, and durable runs re-import their functions "
            "after a restart: define it at module level (no lambda, nested function or partial)"
        )
    return f"{module}:{qualname}"


def is_type(value: Any, kind: str) -> bool:
    """Whether ``value`` is of the JSON-schema-like ``kind`` (a bool is never a number)."""
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    expected = {"string": str, "boolean": bool, "object": Mapping, "array": list | tuple}[kind]
    return isinstance(value, expected)


def json_type(value: Any) -> str:
    """The name of ``value``'s type in messages (``integer``, ``string``, ``null``…)."""
    for kind in ("boolean", "integer", "number", "string", "object", "array"):
        if is_type(value, kind):
            return kind
    return "null" if value is None else type(value).__name__


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` as a mapping with string keys (None is an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        fail(f"'{where}' must be a mapping with string keys", where)
    return value


def task_ids(value: Any, label: str, where: str) -> list[str]:
    """A task id or a list of them, as a list."""
    ids = [value] if isinstance(value, str) else value
    if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
        key = where.rsplit(".", 1)[-1]
        fail(f"{label}: '{key}' must be a task id or a list of them", where)
    return list(ids)


def check_count(value: Any, label: str, where: str) -> None:
    """Refuse anything but an integer >= 1."""
    if not (is_type(value, "integer") and value >= 1):
        fail(f"{label} must be an integer >= 1", where)


def check_templates(value: Any, label: str, where: str) -> None:
    """Refuse ``value`` when one of its strings is not a valid template."""
    for text in templates.template_strings(value):
        try:
            templates.check_template(text)
        except templates.TemplateError as exc:
            fail(f"{label} is not a valid template: {exc}", where)


def refuse_unknown(raw: Mapping[str, Any], allowed: Iterable[str], label: str, where: str) -> None:
    """Refuse keys outside ``allowed``, suggesting the closest one."""
    allowed = tuple(allowed)
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            known = ", ".join(sorted(allowed))
            param = f"{where}.{key}" if where else str(key)
            fail(f"{label} has unknown key '{key}'; {hint}allowed: {known}", param)
