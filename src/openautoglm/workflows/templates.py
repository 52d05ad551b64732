"""Jinja2 templates and expressions inside workflow definitions, rendered in a sandbox.

Every template runs in a :class:`~jinja2.sandbox.SandboxedEnvironment` with ``StrictUndefined``
(a missing name is an error, never an empty string) and autoescape off (the output is a prompt,
a URL or JSON, not HTML). Nothing rendered here can reach dunder attributes or call unsafe
methods; every failure is a :class:`TemplateError` with a readable message.

Variables a template sees at run time:

- ``inputs``: the run's inputs, after :func:`~openautoglm.workflows.definition.check_inputs`.
- ``tasks``: task id → ``{"output": ...}`` for every task that has finished.
- ``item`` and ``index``: the element and its 0-based position, inside a ``map`` task.
- ``run``: ``{"id": <run id>}``.

:func:`render_value` keeps native values: a string that is exactly one ``{{ expr }}`` becomes
the expression's value (a list stays a list), so ``over: "{{ tasks.fetch.output.rows }}"`` gives
a list and ``json: {"amount": "{{ inputs.amount }}"}`` a number.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.environment import Template, TemplateExpression
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

# One `{{ ... }}` and nothing around it; the inner part may not open or close another block.
_SINGLE_EXPRESSION = re.compile(r"\s*\{\{-?((?:(?!\}\}|\{\{|\{%|\{#).)*?)-?\}\}\s*", re.DOTALL)
# Errors a template can raise while rendering user data (comparing a string with a number,
# dividing by zero); anything else is a bug and propagates.
_RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, ArithmeticError)


class TemplateError(Exception):
    """A template or expression that cannot be parsed or rendered; the message says why."""


@functools.lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


@functools.lru_cache(maxsize=2048)
def _template(text: str) -> Template:
    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(_syntax_message(exc)) from exc


@functools.lru_cache(maxsize=2048)
def _expression(expression: str) -> TemplateExpression:
    try:
        return _environment().compile_expression(expression, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(_syntax_message(exc)) from exc


def _syntax_message(exc: jinja2.TemplateSyntaxError) -> str:
    return f"syntax error at line {exc.lineno}: {exc.message}"


def check_template(text: str) -> None:
    """Raise :class:`TemplateError` if ``text`` is not a valid template."""
    _template(text)


def check_expression(expression: str) -> None:
    """Raise :class:`TemplateError` if ``expression`` is not a valid bare Jinja expression."""
    _expression(expression)


def render(template: str, variables: Mapping[str, Any]) -> str:
    """Render ``template`` with ``variables``; always a string."""
    try:
        return _template(template).render(dict(variables))
    except _RENDER_ERRORS as exc:
        raise TemplateError(f"cannot render {_quote(template)}: {_describe(exc)}") from exc


def evaluate(expression: str, variables: Mapping[str, Any]) -> Any:
    """The value of a bare expression such as ``inputs.amount > 100``."""
    try:
        value = _expression(expression)(**variables)
        if isinstance(value, jinja2.Undefined):
            # Returning an undefined does not touch it, so StrictUndefined has not raised yet.
            value._fail_with_undefined_error()
    except _RENDER_ERRORS as exc:
        raise TemplateError(f"cannot evaluate {_quote(expression)}: {_describe(exc)}") from exc
    return value


def render_value(value: Any, variables: Mapping[str, Any]) -> Any:
    """Render every string inside ``value`` (walking dicts, lists and tuples).

    A string that is exactly one ``{{ expr }}`` gives the expression's native value; any other
    string is rendered as text. Values that are not strings are returned as they are.
    """
    if isinstance(value, str):
        match = _SINGLE_EXPRESSION.fullmatch(value)
        if match is not None:
            return evaluate(match.group(1), variables)
        return render(value, variables)
    if isinstance(value, Mapping):
        return {key: render_value(item, variables) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(item, variables) for item in value]
    return value


def template_strings(value: Any) -> list[str]:
    """Every string inside ``value`` (walking dicts, lists and tuples), to check them all."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [text for item in value.values() for text in template_strings(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in template_strings(item)]
    return []


def _describe(exc: Exception) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {exc.message}"
    if isinstance(exc, SecurityError):
        return f"not allowed: {exc.message}"
    return str(exc) or type(exc).__name__


def _quote(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
