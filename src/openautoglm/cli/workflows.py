"""``autoglm workflows`` and ``autoglm runs``: durable workflows on a running server, over HTTP.

``workflows`` applies YAML definitions, shows them and their graphs, and starts runs; ``runs``
lists, shows and follows runs and steers them (cancel, retry from the failed tasks, approve).
Following a run polls ``GET /v1/runs/{id}`` every 0.5 s and redraws one live table of its tasks.
Exit status: 0 done, 1 the server refused (its message is printed), 2 bad input; following a run
(``run --wait``, ``watch``, ``retry --wait``) exits 0 when it succeeded, 1 when it failed or was
cancelled, 2 when it was still going at ``--timeout``.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer
import yaml
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from openautoglm.cli.common import err, out
from openautoglm.cli.remote import (
    DEFAULT_URL,
    ApiKeyOption,
    Remote,
    UrlOption,
    _error_of,
    cell,
    connect,
    duration_option,
    fail,
    fields,
    parse_pairs,
    when,
)

app = typer.Typer(
    help="Apply, show and start durable DAG workflows (on a running server).", no_args_is_help=True
)
runs_app = typer.Typer(
    help="List, follow and steer workflow runs (on a running server).", no_args_is_help=True
)

POLL_S = 0.5
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
STATE_STYLES = {
    "queued": "dim",
    "pending": "dim",
    "running": "bold cyan",
    "retrying": "bold yellow",
    "waiting": "bold magenta",
    "succeeded": "bold green",
    "failed": "bold red",
    "cancelled": "yellow",
    "skipped": "dim",
}

NameArg = Annotated[str, typer.Argument(help="workflow name")]
RunArg = Annotated[str, typer.Argument(help="run id (run_…)")]
WaitOption = Annotated[bool, typer.Option("--wait", help="follow the run live until it ends")]
TimeoutOption = Annotated[int, duration_option("3600", "stop following after this long")]


class GraphFormat(StrEnum):
    MERMAID = "mermaid"
    DOT = "dot"
    SVG = "svg"


def _workflow_path(name: str, tail: str = "") -> str:
    return f"/v1/workflows/{quote(name, safe='')}{tail}"


def _run_path(run_id: str, tail: str = "") -> str:
    return f"/v1/runs/{quote(run_id, safe='')}{tail}"


def _state(state: str) -> Text:
    return Text(state, STATE_STYLES.get(state, ""))


def _at(unix: float | None) -> str:
    return when(None if unix is None else int(unix))


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
        table.add_row(cell(flow["name"]), str(flow["version"]), _at(flow["updated_at"]))
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
        content = _fetch(remote, _workflow_path(name, "/graph"), params)
    if output is None:
        print(content.decode("utf-8"), end="")
        return
    try:
        output.write_bytes(content)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
        raise typer.Exit(2) from exc
    err.print(f"Wrote the {graph_format.value} graph of {escape(name)} to {escape(str(output))}.")


def _fetch(remote: Remote, path: str, params: dict[str, Any]) -> bytes:
    """The body of a reply that is not JSON; failures are reported as ``Remote.call`` does."""
    try:
        # Remote.call decodes JSON only; a graph is text or SVG, so this goes one level down.
        response = remote._http.get(path, params=params)
    except httpx.HTTPError as exc:
        fail(f"request to {remote.url} failed: {exc}")
        raise typer.Exit(1) from exc
    if response.is_error:
        message, code = _error_of(response)
        fail(f"{message} ({code})")
        raise typer.Exit(1)
    return response.content


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
            _finish(_follow(remote, started["id"], timeout), timeout)


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


def render_run(run: dict[str, Any], *, detail: bool = False) -> Group:
    """A run as people read it: where it stands, then one row per task."""
    head: list[tuple[str, object]] = [
        ("run", run["id"]),
        ("workflow", f"{run['workflow']} version {run['workflow_version']}"),
        ("state", _state(run["state"])),
    ]
    if detail:
        head += [
            ("trigger", f"{run['trigger']} by {run['created_by'] or '-'}"),
            ("priority", run["priority"]),
            ("deadline", _at(run["deadline"])),
            ("created", _at(run["created_at"])),
            ("finished", _at(run["finished_at"])),
            ("inputs", run["inputs"] or None),
        ]
    head.append(("elapsed", _elapsed(run)))
    if run["error"]:
        head.append(("error", Text(run["error"], "red")))
    columns = ["task", "state", "attempts", "duration", "error"]
    table = Table(*columns, *(["idempotency key"] if detail else []))
    for task in run.get("tasks") or ():
        error = task["error"] and f"{task['error_class'] or 'error'}: {task['error']}"
        key = [cell(task["idempotency_key"])] if detail else []
        row = (_state(task["state"]), str(task["attempts"]), _duration(task), cell(error))
        table.add_row(cell(task["task_id"]), *row, *key)
    return Group(fields(*head), table)


def _elapsed(run: dict[str, Any]) -> str:
    if run["started_at"] is None:
        return "-"
    end = run["finished_at"] if run["finished_at"] is not None else time.time()
    return f"{max(0.0, end - run['started_at']):.1f} s"


def _duration(task: dict[str, Any]) -> str:
    if task["duration_s"] is not None:
        return f"{task['duration_s']:.2f} s"
    if task["started_at"] is not None and task["state"] in ("running", "waiting"):
        return f"{max(0.0, time.time() - task['started_at']):.1f} s…"
    return "-"


def _follow(remote: Remote, run_id: str, timeout_s: int) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with Live(console=out, auto_refresh=False) as live:
        while True:
            run: dict[str, Any] = remote.call("GET", _run_path(run_id))
            live.update(render_run(run), refresh=True)
            left_s = deadline - time.monotonic()
            if run["state"] in FINISHED or left_s <= 0:
                break
            time.sleep(min(POLL_S, left_s))
    if not out.is_terminal:
        out.line()  # Rich leaves a Live drawn to a pipe or file without its final newline
    return run


def _finish(run: dict[str, Any], timeout_s: int) -> NoReturn:
    """Print how a followed run ended and exit with its status."""
    if run["state"] not in FINISHED:
        fail(f"run {run['id']} is still {run['state']} after {timeout_s} s; stopped following")
        raise typer.Exit(2)
    _print_outputs(run)
    out.print(Text(f"run {run['id']} {run['state']}", STATE_STYLES.get(run["state"], "")))
    raise typer.Exit(0 if run["state"] == "succeeded" else 1)


def _print_outputs(run: dict[str, Any]) -> None:
    if run["outputs"]:
        out.print(Text("outputs", "bold"))
        out.print(fields(*run["outputs"].items()))


# -- runs --------------------------------------------------------------------------------------


@runs_app.command("list")
def list_runs(
    workflow: Annotated[str | None, typer.Option(help="only this workflow's runs")] = None,
    state: Annotated[str | None, typer.Option(help="only runs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many")] = 20,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """List runs, newest first."""
    params: dict[str, Any] = {"limit": limit, "workflow": workflow, "state": state}
    with connect(url, api_key) as remote:
        found = remote.call("GET", "/v1/runs", params={k: v for k, v in params.items() if v})
    if not found["data"]:
        err.print("No runs.")
        return
    table = Table("id", "workflow", "version", "state", "trigger", "created", "elapsed", "error")
    for run in found["data"]:
        head = map(cell, (run["id"], run["workflow"], run["workflow_version"]))
        tail = (cell(run["trigger"]), _at(run["created_at"]), _elapsed(run), cell(run["error"]))
        table.add_row(*head, _state(run["state"]), *tail)
    out.print(table)


@runs_app.command("show")
def show_run(run_id: RunArg, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Show a run: its inputs, tasks (with errors and idempotency keys) and outputs."""
    with connect(url, api_key) as remote:
        run = remote.call("GET", _run_path(run_id))
    out.print(render_run(run, detail=True))
    _print_outputs(run)


@runs_app.command("watch")
def watch(
    run_id: RunArg,
    timeout: TimeoutOption = 3600,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Follow a run live until it ends (or ``--timeout`` passes)."""
    with connect(url, api_key) as remote:
        run = _follow(remote, run_id, timeout)
    _finish(run, timeout)


@runs_app.command("cancel")
def cancel(run_id: RunArg, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Cancel an unfinished run: its unfinished tasks are cancelled, running ones interrupted."""
    with connect(url, api_key) as remote:
        run = remote.call("POST", _run_path(run_id, "/cancel"))
    err.print(f"Run {escape(run['id'])} is now {run['state']}.")


@runs_app.command("retry")
def retry(
    run_id: RunArg,
    from_failed: Annotated[
        bool, typer.Option("--from-failed", help="required: rerun the failed tasks only")
    ] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = 3600,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Resume a failed or cancelled run from its failed tasks; succeeded tasks are kept."""
    if not from_failed:
        message = "a run is retried from its failed tasks: pass --from-failed"
        raise typer.BadParameter(message, param_hint="--from-failed")
    with connect(url, api_key) as remote:
        run = remote.call("POST", _run_path(run_id, "/retry"))
        err.print(f"Run {escape(run['id'])} is {run['state']} again from its failed tasks.")
        if wait:
            _finish(_follow(remote, run_id, timeout), timeout)


@runs_app.command("approve")
def approve(
    run_id: RunArg,
    task_id: Annotated[str, typer.Argument(help="the approval task waiting")],
    reject: Annotated[bool, typer.Option("--reject", help="reject instead")] = False,
    comment: Annotated[str | None, typer.Option(help="kept with the decision")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Approve (or ``--reject``) an approval task that is waiting."""
    body = {"approved": not reject, "comment": comment}
    with connect(url, api_key) as remote:
        task = remote.call(
            "POST", _run_path(run_id, f"/tasks/{quote(task_id, safe='')}/approve"), json=body
        )
    decision = "rejected" if reject else "approved"
    err.print(
        f"Task {escape(task['task_id'])} of run {escape(run_id)} {decision} ({task['state']})."
    )
