"""Workflow definitions: every task type, defaults, refusals, inputs, retries, Python API."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from openautoglm.core.errors import InvalidRequestError, NotFoundError
from openautoglm.workflows.definition import (
    InputSpec,
    RetryPolicy,
    WorkflowError,
    WorkflowSpec,
    check_inputs,
    load_workflow,
    parse_workflow,
)
from openautoglm.workflows.python_api import Task, Workflow

EXAMPLE = """
name: quarterly-sales
description: Sales summary for a quarter
inputs:
  quarter: {type: string, description: like 2025-Q1}
  limit: {type: integer, default: 5}
  region: {type: string, required: false}
outputs:
  summary: "{{ tasks.summarise.output.text }}"
max_parallel: 8
defaults:
  retry: {max_attempts: 4, delay_s: 2}
  timeout_s: 300
tasks:
  - id: fetch
    type: http
    url: "https://erp.example/sales?q={{ inputs.quarter }}"
    headers: {Accept: application/json}
    expect_status: [200, 201]
  - id: pick
    type: branch
    depends: fetch
    cases:
      - {when: "tasks.fetch.output.rows | length > 100", then: [per_row]}
    default: [compute]
  - id: per_row
    type: map
    depends: [pick]
    over: "{{ tasks.fetch.output.rows }}"
    max_parallel: 2
    task: {type: llm, model: glm-4, prompt: "Classify {{ item }} ({{ index }})"}
  - id: compute
    type: python
    depends: [pick]
    callable: "reports.sales:compute"
    args: {rows: "{{ tasks.fetch.output.rows }}", limit: "{{ inputs.limit }}"}
    retry: {backoff: exponential, retry_on: [python]}
    on_failure: continue
  - id: sign_off
    type: approval
    depends: [per_row, compute]
    trigger: none_failed
    message: "Publish {{ inputs.quarter }}?"
  - id: summarise
    type: llm
    depends: sign_off
    model: glm-4
    system: You write short reports.
    messages:
      - {role: user, content: "总结 {{ inputs.quarter }} 的销售"}
    max_tokens: 400
    temperature: 0.2
    timeout_s: 60
"""


def _doc(*tasks: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "wf", "tasks": list(tasks), **top}


def _py(task_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "python", "callable": "m:f", **extra}


def _refused(document: dict[str, Any]) -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(document)
    return caught.value


@pytest.fixture(scope="module")
def spec() -> WorkflowSpec:
    return load_workflow(EXAMPLE)


def test_every_task_type_is_parsed(spec: WorkflowSpec) -> None:
    assert [t.id for t in spec.tasks] == [
        "fetch",
        "pick",
        "per_row",
        "compute",
        "sign_off",
        "summarise",
    ]
    assert [t.type for t in spec.tasks] == ["http", "branch", "map", "python", "approval", "llm"]
    assert dict(spec.task("fetch").config) == {
        "url": "https://erp.example/sales?q={{ inputs.quarter }}",
        "method": "GET",
        "headers": {"Accept": "application/json"},
        "expect_status": [200, 201],
    }
    assert spec.task("pick").depends == ("fetch",)
    assert spec.task("pick").config["cases"] == [
        {"when": "tasks.fetch.output.rows | length > 100", "then": ["per_row"]}
    ]
    assert spec.task("pick").config["default"] == ["compute"]
    assert dict(spec.task("per_row").config) == {
        "over": "{{ tasks.fetch.output.rows }}",
        "max_parallel": 2,
        "task": {"type": "llm", "model": "glm-4", "prompt": "Classify {{ item }} ({{ index }})"},
    }
    assert spec.task("compute").config["callable"] == "reports.sales:compute"
    assert spec.task("compute").on_failure == "continue"
    assert spec.task("sign_off").trigger == "none_failed"
    summarise = spec.task("summarise")
    assert summarise.config["messages"] == [
        {"role": "user", "content": "总结 {{ inputs.quarter }} 的销售"}
    ]
    assert (summarise.config["max_tokens"], summarise.config["temperature"]) == (400, 0.2)
    assert spec.max_parallel == 8
    assert spec.outputs == {"summary": "{{ tasks.summarise.output.text }}"}
    assert spec.inputs["quarter"] == InputSpec("quarter", "string", True, None, "like 2025-Q1")
    assert spec.inputs["limit"] == InputSpec("limit", "integer", False, 5)


def test_defaults_are_applied_unless_the_task_sets_its_own(spec: WorkflowSpec) -> None:
    assert spec.task("fetch").retry == RetryPolicy(max_attempts=4, delay_s=2.0)
    assert spec.task("fetch").timeout_s == 300.0
    # a task's retry is merged key by key over defaults.retry
    assert spec.task("compute").retry == RetryPolicy(
        max_attempts=4, delay_s=2.0, backoff="exponential", retry_on=("python",)
    )
    assert spec.task("summarise").timeout_s == 60.0
    assert spec.task("sign_off").timeout_s is None  # approvals wait for a person
    bare = parse_workflow(_doc({"id": "a", "type": "http", "url": "https://x"}))
    a = bare.task("a")
    assert (a.retry, a.timeout_s, a.on_failure, a.trigger) == (
        RetryPolicy(),
        None,
        "fail_run",
        "all_success",
    )
    mapped = parse_workflow(
        _doc(
            {
                "id": "m",
                "type": "map",
                "over": "{{ inputs.xs }}",
                "task": {"type": "http", "url": "u"},
            }
        )
    )
    assert mapped.task("m").config["max_parallel"] == 4
    assert mapped.task("m").config["task"] == {"type": "http", "url": "u", "method": "GET"}


def test_spec_lookups(spec: WorkflowSpec) -> None:
    assert spec.dependents("pick") == ["per_row", "compute"]
    assert spec.dependents("summarise") == []
    with pytest.raises(NotFoundError, match="no task 'nope'"):
        spec.task("nope")


def test_as_document_round_trips(spec: WorkflowSpec) -> None:
    document = spec.as_document()
    assert "defaults" not in document
    assert document["tasks"][0]["retry"]["max_attempts"] == 4
    assert parse_workflow(document) == spec
    assert parse_workflow(parse_workflow(document).as_document()).as_document() == document


def test_depends_accepts_a_single_string_and_drops_repeats() -> None:
    spec = parse_workflow(_doc(_py("a"), _py("b", depends="a"), _py("c", depends=["a", "b", "a"])))
    assert spec.task("b").depends == ("a",)
    assert spec.task("c").depends == ("a", "b")


@pytest.mark.parametrize(
    ("document", "param", "message"),
    [
        (_doc(_py("a"), _py("a")), "tasks[1].id", "task id 'a' is used twice"),
        (
            _doc(_py("a"), _py("b", depends=["zz"])),
            "tasks[1].depends",
            "task 'b' depends on unknown task 'zz'",
        ),
        (_doc(_py("a", depends="a")), "tasks[0].depends", "cycle: a → a"),
        (
            _doc(
                _py("a"), {"id": "br", "type": "branch", "cases": [{"when": "true", "then": "a"}]}
            ),
            "tasks[1].cases",
            "branch 'br' chooses 'a', which must depend on it",
        ),
        (
            _doc(
                _py("a", depends="br"),
                {
                    "id": "br",
                    "type": "branch",
                    "cases": [{"when": "1", "then": "a"}],
                    "default": "x",
                },
            ),
            "tasks[1].default",
            "chooses 'x'",
        ),
        (_doc({"id": "a", "type": "http", "uri": "u"}), "tasks[0].uri", "did you mean 'url'?"),
        (_doc({"id": "a", "type": "shell"}), "tasks[0].type", "one of llm, http, python"),
        (_doc({"id": "a", "type": "http"}), "tasks[0].url", "task 'a' (http) needs 'url'"),
        (_doc({"id": "a", "type": "llm", "model": "m"}), "tasks[0].prompt", "exactly one of"),
        (
            _doc({"id": "a", "type": "llm", "model": "m", "prompt": "Hi {{ name "}),
            "tasks[0].prompt",
            "task 'a': 'prompt' is not a valid template: syntax error at line 1",
        ),
        (
            _doc({"id": "a", "type": "python", "callable": "m:f", "args": {"x": ["{% if %}"]}}),
            "tasks[0].args",
            "task 'a': 'args' is not a valid template",
        ),
        (
            _doc({"id": "b", "type": "branch", "cases": [{"when": "{{ x }}", "then": []}]}),
            "tasks[0].cases[0].when",
            "bare expression",
        ),
        (
            _doc({"id": "b", "type": "branch", "cases": [{"when": "x >", "then": []}]}),
            "tasks[0].cases[0].when",
            "not a valid expression",
        ),
        (
            _doc({"id": "m", "type": "map", "over": "x", "task": {"type": "map"}}),
            "tasks[0].task.type",
            "one of llm, http, python",
        ),
        (
            _doc(
                {
                    "id": "m",
                    "type": "map",
                    "over": "x",
                    "task": {"type": "http", "url": "u", "id": "z"},
                }
            ),
            "tasks[0].task.id",
            "unknown key 'id'",
        ),
        (
            _doc({"id": "a", "type": "http", "url": "u", "method": "FETCH"}),
            "tasks[0].method",
            "GET, POST",
        ),
        (
            _doc({"id": "a", "type": "http", "url": "u", "json": {}, "body": "x"}),
            "tasks[0].body",
            "not both",
        ),
        (
            _doc({"id": "a", "type": "http", "url": "u", "expect_status": [99]}),
            "tasks[0].expect_status",
            "100-599",
        ),
        (
            _doc({"id": "a", "type": "python", "callable": "no_colon"}),
            "tasks[0].callable",
            "package.module:function",
        ),
        (
            _doc({"id": "a", "type": "llm", "model": "m", "prompt": "p", "temperature": 3}),
            "tasks[0].temperature",
            "0 to 2",
        ),
        (
            _doc(
                {
                    "id": "a",
                    "type": "llm",
                    "model": "m",
                    "messages": [{"role": "bot", "content": "x"}],
                }
            ),
            "tasks[0].messages[0].role",
            "system, user, assistant",
        ),
        (_doc(_py("a", retry={"max_attempts": 0})), "tasks[0].retry.max_attempts", "integer >= 1"),
        (_doc(_py("a", retry={"retry_on": ["disk"]})), "tasks[0].retry.retry_on", "timeout, http"),
        (
            _doc(_py("a", retry={"backoff": "linear"})),
            "tasks[0].retry.backoff",
            "fixed or exponential",
        ),
        (_doc(_py("a", retry={"tries": 2})), "tasks[0].retry.tries", "unknown key 'tries'"),
        (_doc(_py("a", timeout_s=0)), "tasks[0].timeout_s", "> 0"),
        (_doc(_py("a", on_failure="ignore")), "tasks[0].on_failure", "fail_run or continue"),
        (_doc(_py("a", trigger="any")), "tasks[0].trigger", "all_success, none_failed or all_done"),
        (_doc(_py("a b")), "tasks[0].id", "'id' must be 1-100"),
        (_doc(_py("a"), name="bad name"), "name", "'name' must be 1-200"),
        (_doc(_py("a"), owner="x"), "owner", "the workflow has unknown key 'owner'"),
        (_doc(), "tasks", "non-empty list"),
        (_doc(_py("a"), max_parallel=0), "max_parallel", "integer >= 1"),
        (_doc(_py("a"), defaults={"timeout": 3}), "defaults.timeout", "did you mean 'timeout_s'?"),
        (_doc(_py("a"), outputs={"o": "{{ x"}), "outputs.o", "output 'o' is not a valid template"),
        (_doc(_py("a"), inputs={"q": {"type": "text"}}), "inputs.q.type", "needs a type"),
        (
            _doc(_py("a"), inputs={"q": {"type": "integer", "default": "5"}}),
            "inputs.q.default",
            "not of type integer",
        ),
        (
            _doc(_py("a"), inputs={"q": {"type": "string", "default": "x", "required": True}}),
            "inputs.q",
            "false when a default",
        ),
    ],
)
def test_refusals_name_the_field(document: dict[str, Any], param: str, message: str) -> None:
    error = _refused(document)
    assert isinstance(error, InvalidRequestError)
    assert (error.status, error.code, error.param) == (400, "invalid_workflow", param)
    assert message in error.message


def test_a_cycle_is_refused_naming_it_in_dependency_order() -> None:
    # b depends on a, c on b, a on c: a → b → c → a
    error = _refused(
        _doc(_py("a", depends="c"), _py("b", depends="a"), _py("c", depends="b"), _py("d"))
    )
    assert error.message == "the tasks form a cycle: a → b → c → a"
    assert error.param == "tasks[0].depends"


def test_at_most_ten_thousand_tasks() -> None:
    error = _refused(_doc(*[_py(f"t{i}") for i in range(10_001)]))
    assert (error.param, error.message) == (
        "tasks",
        "a workflow has at most 10000 tasks, this one has 10001",
    )


def test_yaml_errors_name_the_line() -> None:
    with pytest.raises(WorkflowError, match=r"^line 3, column 3: not valid YAML"):
        load_workflow("name: x\ntasks: [\n  - a: : b")
    with pytest.raises(WorkflowError, match="is a mapping"):
        load_workflow("- just a list")


def test_check_inputs_fills_defaults_and_refuses_the_rest(spec: WorkflowSpec) -> None:
    assert check_inputs(spec, {"quarter": "2025-Q1"}) == {
        "quarter": "2025-Q1",
        "limit": 5,
        "region": None,
    }
    assert check_inputs(spec, {"quarter": "Q2", "limit": 9, "region": "华东"})["region"] == "华东"
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({}, "inputs.quarter", "input 'quarter' is required"),
        ({"quarter": "Q1", "year": 2025}, "inputs.year", "unknown input 'year'"),
        ({"quarter": 3}, "inputs.quarter", "input 'quarter' must be of type string, got integer"),
        ({"quarter": "Q1", "limit": True}, "inputs.limit", "must be of type integer, got boolean"),
        ({"quarter": "Q1", "limit": 2.5}, "inputs.limit", "got number"),
    ]
    for inputs, param, message in cases:
        with pytest.raises(WorkflowError) as caught:
            check_inputs(spec, inputs)
        assert caught.value.param == param
        assert message in caught.value.message


def test_retry_delays_and_decisions() -> None:
    fixed = RetryPolicy(max_attempts=3, delay_s=10)
    assert [fixed.delay_for(n) for n in (1, 2, 3)] == [10, 10, 10]
    exponential = RetryPolicy(max_attempts=10, delay_s=2, backoff="exponential", max_delay_s=30)
    assert [exponential.delay_for(n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert exponential.delay_for(10_000) == 30
    assert fixed.should_retry(1, "timeout") and fixed.should_retry(2, "llm")
    assert not fixed.should_retry(3, "timeout")
    narrow = RetryPolicy(max_attempts=5, retry_on=("timeout", "http"))
    assert narrow.should_retry(1, "http")
    assert not narrow.should_retry(1, "python")


# Python API: module-level functions, re-importable by "module:qualname".


def extract(ctx: Any) -> dict[str, int]:
    return {"rows": 3}


async def load(ctx: Any) -> None:
    return None


def test_python_api_builds_python_tasks() -> None:
    wf = Workflow(
        "etl",
        tasks=[
            Task("extract", execute=extract),
            Task(
                "load",
                execute=load,
                depends="extract",
                retry=RetryPolicy(max_attempts=1),
                timeout_s=5,
            ),
        ],
        inputs={"day": {"type": "string"}, "full": InputSpec("full", "boolean", False, False)},
        outputs={"rows": "{{ tasks.extract.output.rows }}"},
        description="nightly",
    )
    spec = wf.spec()
    assert spec.name == "etl" and spec.description == "nightly"
    assert spec.task("extract").config == {"callable": f"{__name__}:extract"}
    load_spec = spec.task("load")
    assert (load_spec.type, load_spec.depends, load_spec.timeout_s) == ("python", ("extract",), 5.0)
    assert load_spec.retry == RetryPolicy(max_attempts=1)
    assert spec.inputs["full"] == InputSpec("full", "boolean", False, False)
    assert parse_workflow(spec.as_document()) == spec


def test_decorator_form() -> None:
    wf = Workflow("etl")
    assert wf.task("extract")(extract) is extract
    wf.task(depends=["extract"], on_failure="continue")(load)
    spec = wf.spec()
    assert [(t.id, t.depends, t.config["callable"]) for t in spec.tasks] == [
        ("extract", (), f"{__name__}:extract"),
        ("load", ("extract",), f"{__name__}:load"),
    ]
    assert spec.task("load").on_failure == "continue"


def test_python_api_refuses_functions_that_cannot_be_reimported() -> None:
    def nested(ctx: Any) -> None:
        return None

    for function in (nested, lambda ctx: None, functools.partial(extract)):
        wf = Workflow("etl", tasks=[Task("a", execute=extract), Task("b", execute=function)])
        with pytest.raises(WorkflowError) as caught:
            wf.spec()
        assert caught.value.param == "tasks[1].callable"
        assert "task 'b': " in caught.value.message
        assert "cannot be imported by name" in caught.value.message


def test_python_api_is_validated_like_yaml() -> None:
    wf = Workflow("etl")
    wf.task("load", depends="extract")(load)
    with pytest.raises(WorkflowError, match="task 'load' depends on unknown task 'extract'"):
        wf.spec()
