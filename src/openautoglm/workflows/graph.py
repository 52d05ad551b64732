"""The task graph of a workflow: cycles, order, descendants, and pictures of it.

Edges are given as ``task id → the ids it depends on`` (the ``depends`` of each task). Paths are
written in dependency order: ``a → b`` means ``b`` depends on ``a``, so ``a`` runs first, and a
cycle reads the way work would flow around it. Only :func:`render_svg` touches the outside world
(it runs Graphviz's ``dot`` when it is installed).
"""

from __future__ import annotations

import graphlib
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from openautoglm.workflows import schema

if TYPE_CHECKING:
    from openautoglm.workflows.definition import TaskSpec, WorkflowSpec

RENDER_TIMEOUT_S = 10.0

# state -> (fill, stroke, text colour, dashed); a state not listed (pending) keeps the default look
STATE_COLOURS: Mapping[str, tuple[str, str, str, bool]] = {
    "succeeded": ("#d3f9d8", "#2b8a3e", "#1b4d26", False),
    "failed": ("#ffe3e3", "#c92a2a", "#7a1a1a", False),
    "running": ("#d0ebff", "#1864ab", "#0b3b66", False),
    "retrying": ("#ffe8cc", "#d9480f", "#7a2a06", False),
    "waiting": ("#e5dbff", "#5f3dc4", "#34216b", False),
    "skipped": ("#f1f3f5", "#868e96", "#495057", False),
    "cancelled": ("#f1f3f5", "#868e96", "#495057", True),
}
# Mermaid node shapes by task type: (open, close); every other type is a rectangle.
_MERMAID_SHAPES: Mapping[str, tuple[str, str]] = {
    "map": ("[[", "]]"),
    "branch": ("{", "}"),
    "approval": ("{{", "}}"),
}
_DOT_SHAPES: Mapping[str, str] = {
    "map": "box, peripheries=2",
    "branch": "diamond",
    "approval": "hexagon",
}


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as a closed path in dependency order (``["a", "b", "c", "a"]``), or None.

    ``edges`` maps each task to the tasks it depends on; ids that are not keys are leaves. The
    search visits tasks in the mapping's order and the cycle starts at its member listed first,
    so the same graph always gives the same answer.
    """
    order = {node: position for position, node in enumerate(edges)}
    done: set[str] = set()
    for start in edges:
        if start in done:
            continue
        # Iterative DFS along "depends on"; a workflow may hold 10,000 tasks in a chain.
        path: list[str] = [start]
        on_path: dict[str, int] = {start: 0}
        pending: list[list[str]] = [list(reversed(edges.get(start, ())))]
        while pending:
            if not pending[-1]:
                pending.pop()
                node = path.pop()
                del on_path[node]
                done.add(node)
                continue
            nxt = pending[-1].pop()
            if nxt in on_path:
                # path[i:] walks against dependency order; reverse it to read a -> b -> c.
                cycle = list(reversed(path[on_path[nxt] :]))
                first = min(range(len(cycle)), key=lambda i: order.get(cycle[i], len(order)))
                cycle = cycle[first:] + cycle[:first]
                return [*cycle, cycle[0]]
            if nxt in done or nxt not in edges:
                continue
            on_path[nxt] = len(path)
            path.append(nxt)
            pending.append(list(reversed(edges[nxt])))
    return None


def check_graph(tasks: Sequence[TaskSpec]) -> None:
    """Refuse duplicate ids, unknown dependencies, cycles and branch targets off the branch.

    Raises :class:`~openautoglm.workflows.schema.WorkflowError` whose ``param`` points at the
    task (``tasks[2].depends``); a cycle is named in dependency order, ``a → b → c → a``.
    """
    positions: dict[str, int] = {}
    for index, task in enumerate(tasks):
        if task.id in positions:
            first = positions[task.id]
            message = f"task id '{task.id}' is used twice (tasks[{first}] and tasks[{index}])"
            schema.fail(message, f"tasks[{index}].id")
        positions[task.id] = index
    for index, task in enumerate(tasks):
        for dep in task.depends:
            if dep not in positions:
                message = f"task '{task.id}' depends on unknown task '{dep}'"
                schema.fail(message, f"tasks[{index}].depends")
    cycle = find_cycle({task.id: task.depends for task in tasks})
    if cycle is not None:
        where = f"tasks[{positions[cycle[0]]}].depends"
        schema.fail(f"the tasks form a cycle: {' → '.join(cycle)}", where)
    for index, task in enumerate(tasks):
        if task.type != "branch":
            continue
        chosen = [("cases", t) for case in task.config["cases"] for t in case["then"]]
        chosen += [("default", t) for t in task.config.get("default", ())]
        for key, target in chosen:
            if target not in positions or task.id not in tasks[positions[target]].depends:
                message = f"branch '{task.id}' chooses '{target}', which must depend on it"
                schema.fail(message, f"tasks[{index}].{key}")


def topological_order(spec: WorkflowSpec) -> list[str]:
    """Every task id, each after all of its dependencies."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for task in spec.tasks:
        sorter.add(task.id, *task.depends)
    return list(sorter.static_order())


def descendants(spec: WorkflowSpec, task_id: str) -> set[str]:
    """Every task that depends on ``task_id``, directly or through others (not itself)."""
    spec.task(task_id)
    found: set[str] = set()
    frontier = [task_id]
    while frontier:
        for child in spec.dependents(frontier.pop()):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def to_mermaid(spec: WorkflowSpec, states: Mapping[str, str] | None = None) -> str:
    """A Mermaid ``flowchart TD`` of the workflow, nodes coloured by ``states`` when given.

    Nodes are named ``t0``, ``t1``… in declaration order (task ids could clash with Mermaid
    keywords such as ``end``); each is labelled ``id<br/>type`` plus its state.
    """
    states = states or {}
    names = {task.id: f"t{position}" for position, task in enumerate(spec.tasks)}
    lines = ["flowchart TD"]
    for task in spec.tasks:
        label = f"{task.id}<br/>{task.type}"
        if task.id in states:
            label += f"<br/>{states[task.id]}"
        opening, closing = _MERMAID_SHAPES.get(task.type, ("[", "]"))
        lines.append(f'    {names[task.id]}{opening}"{label}"{closing}')
    for task in spec.tasks:
        lines.extend(f"    {names[dep]} --> {names[task.id]}" for dep in task.depends)
    used = [state for state in STATE_COLOURS if state in states.values()]
    for state in used:
        fill, stroke, text, dashed = STATE_COLOURS[state]
        style = f"fill:{fill},stroke:{stroke},color:{text}"
        lines.append(f"    classDef {state} {style}{',stroke-dasharray:5 5' if dashed else ''}")
    for state in used:
        members = [names[task.id] for task in spec.tasks if states.get(task.id) == state]
        if members:
            lines.append(f"    class {','.join(members)} {state}")
    return "\n".join(lines) + "\n"


def to_dot(spec: WorkflowSpec, states: Mapping[str, str] | None = None) -> str:
    """A Graphviz DOT digraph of the workflow, with the same shapes and colours as Mermaid."""
    states = states or {}
    lines = [
        f'digraph "{spec.name}" {{',
        "    rankdir=TB;",
        '    node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
    ]
    for task in spec.tasks:
        label = f"{task.id}\\n{task.type}"
        attributes = [f"shape={_DOT_SHAPES.get(task.type, 'box')}"]
        state = states.get(task.id)
        if state is not None:
            label += f"\\n{state}"
        if state is not None and state in STATE_COLOURS:
            fill, stroke, text, dashed = STATE_COLOURS[state]
            style = "rounded,filled,dashed" if dashed else "rounded,filled"
            attributes += [
                f'style="{style}"',
                f'fillcolor="{fill}"',
                f'color="{stroke}"',
                f'fontcolor="{text}"',
            ]
        lines.append(f'    "{task.id}" [label="{label}", {", ".join(attributes)}];')
    for task in spec.tasks:
        lines.extend(f'    "{dep}" -> "{task.id}";' for dep in task.depends)
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(dot: str) -> bytes | None:
    """SVG drawn by Graphviz's ``dot``; None when it is not installed, fails or takes too long."""
    executable = shutil.which("dot")
    if executable is None:
        return None
    try:
        finished = subprocess.run(
            [executable, "-Tsvg"],
            input=dot.encode("utf-8"),
            capture_output=True,
            timeout=RENDER_TIMEOUT_S,
            check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    return finished.stdout if finished.returncode == 0 else None
