"""Templates and expressions: rendering, native values, undefined names, the sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from openautoglm.workflows.templates import (
    TemplateError,
    check_expression,
    check_template,
    evaluate,
    render,
    render_value,
)

VARIABLES: dict[str, Any] = {
    "inputs": {"quarter": "2025-Q1", "amount": 250, "region": "华东"},
    "tasks": {"fetch": {"output": {"rows": [{"n": 1}, {"n": 2}], "total": 3}}},
    "item": {"sku": "A-1"},
    "index": 0,
    "run": {"id": "run_1"},
}


def test_render_text() -> None:
    assert render("Q={{ inputs.quarter }} run={{ run.id }}", VARIABLES) == "Q=2025-Q1 run=run_1"
    assert render("{{ item.sku }}#{{ index }}", VARIABLES) == "A-1#0"
    assert render("<b>{{ '&' }}</b>", {}) == "<b>&</b>"  # autoescape is off
    assert (
        render("{% for r in tasks.fetch.output.rows %}{{ r.n }},{% endfor %}", VARIABLES) == "1,2,"
    )


def test_chinese_text_survives() -> None:
    assert render("总结{{ inputs.region }}地区的销售", VARIABLES) == "总结华东地区的销售"
    assert render_value({"提示": "地区：{{ inputs.region }}"}, VARIABLES) == {"提示": "地区：华东"}
    assert evaluate("inputs.region == '华东'", VARIABLES) is True


def test_render_value_keeps_native_values() -> None:
    value = {
        "rows": "{{ tasks.fetch.output.rows }}",
        "total": "{{ tasks.fetch.output.total }}",
        "spaced": "  {{ inputs.amount * 2 }} ",
        "text": "total={{ tasks.fetch.output.total }}",
        "two": "{{ index }}{{ index }}",
        "list": ["{{ inputs.amount > 100 }}", 7, None, {"deep": "{{ item }}"}],
    }
    assert render_value(value, VARIABLES) == {
        "rows": [{"n": 1}, {"n": 2}],
        "total": 3,
        "spaced": 500,
        "text": "total=3",
        "two": "00",
        "list": [True, 7, None, {"deep": {"sku": "A-1"}}],
    }
    assert render_value("{{ tasks.fetch.output.rows | map(attribute='n') | list }}", VARIABLES) == [
        1,
        2,
    ]


def test_undefined_variables_are_errors_naming_what_is_missing() -> None:
    with pytest.raises(TemplateError, match="undefined variable: 'nothing' is undefined"):
        render("Hello {{ nothing }}", VARIABLES)
    with pytest.raises(TemplateError, match="has no attribute 'missing'"):
        render_value("{{ tasks.missing.output }}", VARIABLES)
    with pytest.raises(TemplateError, match="has no attribute 'nope'"):
        evaluate("inputs.nope", VARIABLES)
    with pytest.raises(TemplateError, match="'item' is undefined"):
        render_value({"x": ["{{ item }}"]}, {})


def test_sandbox_refuses_dunder_attributes() -> None:
    for template in (
        "{{ inputs.__class__ }}",
        "{{ ''.__class__.__mro__ }}",
        "x {{ run.__init__ }}",
    ):
        with pytest.raises(TemplateError, match="not allowed: access to attribute"):
            render_value(template, VARIABLES)
    with pytest.raises(TemplateError, match="unsafe"):
        evaluate("().__class__.__bases__[0].__subclasses__()", {})


def test_evaluate_comparisons() -> None:
    assert evaluate("inputs.amount > 100", VARIABLES) is True
    assert evaluate("inputs.amount > 1000", VARIABLES) is False
    assert evaluate("tasks.fetch.output.rows | length == 2", VARIABLES) is True
    assert evaluate("inputs.quarter.startswith('2025') and index == 0", VARIABLES) is True
    assert evaluate("inputs.amount / 2", VARIABLES) == 125
    with pytest.raises(TemplateError, match="cannot evaluate"):
        evaluate("inputs.quarter > 3", VARIABLES)


def test_syntax_errors() -> None:
    check_template("fine {{ x }}")
    check_expression("a > 1")
    with pytest.raises(TemplateError, match="syntax error at line 2"):
        check_template("line one\n{{ x ")
    with pytest.raises(TemplateError, match="syntax error"):
        check_expression("a >")
    with pytest.raises(TemplateError, match="syntax error"):
        render("{% if %}", {})
