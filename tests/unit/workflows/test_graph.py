"""The task graph: cycles, order, descendants, Mermaid and DOT pictures, SVG via Graphviz."""

from __future__ import annotations

import shutil

import pytest

from openautoglm.core.errors import NotFoundError
from openautoglm.workflows.definition import WorkflowSpec, parse_workflow
from openautoglm.workflows.graph import (
    descendants,
    find_cycle,
    render_svg,
    to_dot,
    to_mermaid,
    topological_order,
)


@pytest.fixture(scope="module")
def spec() -> WorkflowSpec:
    return parse_workflow(
        {
            "name": "report",
            "tasks": [
                {"id": "fetch", "type": "http", "url": "https://x"},
                {
                    "id": "pick",
                    "type": "branch",
                    "depends": "fetch",
                    "cases": [{"when": "true", "then": ["fan"]}],
                    "default": ["calc"],
                },
                {
                    "id": "fan",
                    "type": "map",
                    "depends": "pick",
                    "over": "{{ tasks.fetch.output }}",
                    "task": {"type": "llm", "model": "m", "prompt": "{{ item }}"},
                },
                {"id": "calc", "type": "python", "depends": "pick", "callable": "m:f"},
                {
                    "id": "ok",
                    "type": "approval",
                    "depends": ["fan", "calc"],
                    "trigger": "none_failed",
                },
                {"id": "write", "type": "llm", "depends": "ok", "model": "m", "prompt": "p"},
            ],
        }
    )


def test_find_cycle_returns_a_closed_path_in_dependency_order() -> None:
    # edges map a task to what it depends on: b needs a, c needs b, a needs c
    assert find_cycle({"a": ["c"], "b": ["a"], "c": ["b"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": [], "c": ["b"], "b": ["c"]}) == ["c", "b", "c"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"a": [], "b": ["a"], "c": ["a", "b", "outside"]}) is None
    assert find_cycle({}) is None


def test_find_cycle_handles_long_chains_without_recursion() -> None:
    chain = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(5000)}
    assert find_cycle(chain) is None
    chain["t0"] = ["t4999"]
    cycle = find_cycle(chain)
    assert cycle is not None
    assert (len(cycle), cycle[0], cycle[1], cycle[-1]) == (5001, "t0", "t1", "t0")


def test_topological_order_puts_dependencies_first(spec: WorkflowSpec) -> None:
    order = topological_order(spec)
    assert sorted(order) == sorted(t.id for t in spec.tasks)
    for task in spec.tasks:
        assert all(order.index(dep) < order.index(task.id) for dep in task.depends)
    assert (order[0], order[-1]) == ("fetch", "write")


def test_descendants(spec: WorkflowSpec) -> None:
    assert descendants(spec, "pick") == {"fan", "calc", "ok", "write"}
    assert descendants(spec, "calc") == {"ok", "write"}
    assert descendants(spec, "write") == set()
    with pytest.raises(NotFoundError):
        descendants(spec, "nope")


def test_mermaid_nodes_edges_shapes_and_classes(spec: WorkflowSpec) -> None:
    text = to_mermaid(
        spec,
        {"fetch": "succeeded", "pick": "succeeded", "fan": "running", "calc": "skipped"}
        | {"ok": "pending", "fan[0]": "failed"},
    )
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    for line in [
        '    t0["fetch<br/>http<br/>succeeded"]',
        '    t1{"pick<br/>branch<br/>succeeded"}',
        '    t2[["fan<br/>map<br/>running"]]',
        '    t3["calc<br/>python<br/>skipped"]',
        '    t4{{"ok<br/>approval<br/>pending"}}',
        '    t5["write<br/>llm"]',
        "    t0 --> t1",
        "    t1 --> t2",
        "    t1 --> t3",
        "    t2 --> t4",
        "    t3 --> t4",
        "    t4 --> t5",
        "    class t0,t1 succeeded",
        "    class t2 running",
        "    class t3 skipped",
    ]:
        assert line in lines
    assert "    classDef succeeded fill:#d3f9d8,stroke:#2b8a3e,color:#1b4d26" in lines
    assert "    classDef running fill:#d0ebff,stroke:#1864ab,color:#0b3b66" in lines
    assert "classDef pending" not in text  # pending keeps the default look
    assert "class t4" not in text


def test_mermaid_without_states_has_no_classes(spec: WorkflowSpec) -> None:
    text = to_mermaid(spec)
    assert '    t5["write<br/>llm"]' in text.splitlines()
    assert "class" not in text


def test_mermaid_cancelled_is_dashed_grey(spec: WorkflowSpec) -> None:
    text = to_mermaid(spec, {"write": "cancelled", "ok": "waiting", "calc": "retrying"})
    assert (
        "classDef cancelled fill:#f1f3f5,stroke:#868e96,color:#495057,stroke-dasharray:5 5" in text
    )
    assert "classDef waiting fill:#e5dbff,stroke:#5f3dc4" in text
    assert "classDef retrying fill:#ffe8cc,stroke:#d9480f" in text


def test_dot_output(spec: WorkflowSpec) -> None:
    text = to_dot(spec, {"fetch": "failed", "write": "cancelled"})
    lines = text.splitlines()
    assert lines[0] == 'digraph "report" {'
    assert lines[-1] == "}"
    assert (
        '    "fetch" [label="fetch\\nhttp\\nfailed", shape=box, style="rounded,filled", '
        'fillcolor="#ffe3e3", color="#c92a2a", fontcolor="#7a1a1a"];'
    ) in lines
    assert '    "pick" [label="pick\\nbranch", shape=diamond];' in lines
    assert '    "fan" [label="fan\\nmap", shape=box, peripheries=2];' in lines
    assert '    "ok" [label="ok\\napproval", shape=hexagon];' in lines
    assert 'style="rounded,filled,dashed"' in text
    assert '    "fetch" -> "pick";' in lines
    assert '    "calc" -> "ok";' in lines


def test_render_svg_is_none_without_graphviz(
    spec: WorkflowSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert render_svg(to_dot(spec)) is None


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_render_svg_with_graphviz(spec: WorkflowSpec) -> None:
    svg = render_svg(to_dot(spec, {"fetch": "succeeded"}))
    assert svg is not None and b"<svg" in svg
