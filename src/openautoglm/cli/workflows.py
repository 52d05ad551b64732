"""``autoglm workflows``: durable workflow definitions on a running server, over HTTP.

Applies YAML definitions, shows them and their graphs, and starts runs (``--wait`` follows one
as ``autoglm runs watch`` does, see ``cli/runs.py``). Exit status: 0 done, 1 the server refused
(its message is printed), 2 bad input.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from openautoglm.cli.common import err, out
from openautoglm.cli.remote import (
    DEFAULT_URL,
    ApiKeyOption,
    UrlOption,
    cell,
    connect,
    duration_option,
    fail,
    fields,
    parse_pairs,
)
from openautoglm.cli.runs import TimeoutOption, WaitOption, at_text, exit_for, follow_run

app = typer.Typer(
    help="Apply, show and start durable DAG workflows (on a running server).", no_args_is_help=True
)
NameArg = Annotated[str, typer.Argument(help="workflow name")]


class GraphFormat(StrEnum):
    MERMAID = "mermaid"
    DOT = "dot"
    SVG = "svg"


def _workflow_path(name: str, tail: str = "") -> str:
    return f"/v1/workflows/{quote(name, safe='')}{tail}"


# -- workflows ---------------------------------------------------------------------------------


@app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="workflow definition, YAML", dir_okay=False)],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Store a definition as its workflow's next version (unchanged: the version stays)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}")
        raise typer.Exit(2) from exc
    with connect(url, api_key) as remote:
        applied = remote.call("POST", "/v1/workflows", json={"yaml": text})
    count = len(applied["document"]["tasks"])
    out.print(
        f"Applied workflow {escape(applied['name'])} version {applied['version']} "
        f"({count} task{'s' if count != 1 else ''})."
    )


@app.command("list")
def list_workflows(url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """List workflows with their latest versions."""
    with connect(url, api_key) as remote:
        found = remote.call("GET", "/v1/workflows")["data"]
    if not found:
        err.print("No workflows.")
        return
    table = Table("name", "version", "updated")
    for flow in found:
        table.add_row(cell(flow["name"]), str(flow["version"]), at_text(flow["updated_at"]))
    out.print(table)


@app.command("show")
def show(
    name: NameArg,
    version: Annotated[int | None, typer.Option(min=1, help="default: the latest")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a definition: its inputs, outputs and tasks."""
    params = {"version": version} if version is not None else None
    with connect(url, api_key) as remote:
        found = remote.call("GET", _workflow_path(name), params=params)
    document = found["document"]
    out.print(
        fields(
            ("workflow", found["name"]),
            ("version", found["version"]),
            ("description", document.get("description")),
            ("inputs", document.get("inputs")),
            ("outputs", document.get("outputs")),
            ("max parallel", document.get("max_parallel")),
        )
    )
    table = Table("id", "type", "depends", "retry", "timeout", "on failure")
    for task in document["tasks"]:
        timeout_s = "-" if task["timeout_s"] is None else f"{task['timeout_s']:g} s"
        row = (task["id"], task["type"], ", ".join(task["depends"]))
        table.add_row(*map(cell, row), _retry_text(task["retry"]), timeout_s, task["on_failure"])
    out.print(table)


def _retry_text(retry: dict[str, Any]) -> str:
    if retry["max_attempts"] <= 1:
        return "no retry"
    return f"{retry['max_attempts']} attempts, {retry['delay_s']:g} s {retry['backoff']}"


@app.command("graph")
def graph(
    name: NameArg,
    run: Annotated[str | None, typer.Option("--run", help="colour the tasks by this run")] = None,
    graph_format: Annotated[
        GraphFormat, typer.Option("--format", help="svg needs Graphviz on the server")
    ] = GraphFormat.MERMAID,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write here (default: stdout)")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Print a workflow's graph (Mermaid by default), or write it to a file."""
    params = {"format": graph_format.value} | ({"run_id": run} if run is not None else {})
    with connect(url, api_key) as remote:
        content = remote.fetch(_workflow_path(name, "/graph"), params)
    if output is None:
        print(content.decode("utf-8"), end="")
        return
    try:
        output.write_bytes(content)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
        raise typer.Exit(2) from exc
    err.print(f"Wrote the {graph_format.value} graph of {escape(name)} to {escape(str(output))}.")


@app.command("run")
def start_run(
    name: NameArg,
    item: Annotated[
        list[str] | None,
        typer.Option("--input", help="input KEY=VALUE (repeatable); beats --inputs-file"),
    ] = None,
    inputs_file: Annotated[
        Path | None, typer.Option(help="inputs as a JSON or YAML mapping", dir_okay=False)
    ] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=9, help="0 highest")] = None,
    deadline: Annotated[int | None, duration_option("none", "finish within, e.g. 10m")] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 3600,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Start a run; prints its id on stdout (with ``--wait``, then follows it)."""
    inputs = _read_inputs(inputs_file) if inputs_file is not None else {}
    body: dict[str, Any] = {"priority": priority, "deadline_s": deadline}
    with connect(url, api_key) as remote:
        if item:
            declared = remote.call("GET", _workflow_path(name))["document"]["inputs"]
            inputs |= _typed(item, declared)
        started = remote.call("POST", _workflow_path(name, "/runs"), json=body | {"inputs": inputs})
        print(started["id"])
        if wait:
            exit_for(follow_run(remote, started["id"], timeout), timeout)


def _read_inputs(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        message = f"cannot read {path} as JSON or YAML: {exc}"
        raise typer.BadParameter(message, param_hint="--inputs-file") from exc
    if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
        message = f"{path} must hold a mapping of input names to values"
        raise typer.BadParameter(message, param_hint="--inputs-file")
    return data


def _typed(items: list[str], declared: dict[str, Any]) -> dict[str, Any]:
    """``--input`` values by the declared input types: a string input keeps its text as given
    (``--input code=007``), any other value is decoded as JSON when it is JSON."""
    as_text = parse_pairs(items, "--input")
    strings = {k: v for k, v in as_text.items() if declared.get(k, {}).get("type") == "string"}
    return parse_pairs(items, "--input", typed=True) | strings


# -- following a run ---------------------------------------------------------------------------
