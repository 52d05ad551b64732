"""``autoglm runs``: list, show, follow and steer workflow runs on a running server, over HTTP.

Following a run polls ``GET /v1/runs/{id}`` every 0.5 s and redraws one live table of its tasks.
Exit status: 0 done, 1 the server refused (its message is printed), 2 bad input; following a run
(``workflows run --wait``, ``watch``, ``retry --wait``) exits 0 when it succeeded, 1 when it
failed or was cancelled, 2 when it was still going at ``--timeout``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer
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
    cell,
    connect,
    duration_option,
    fail,
    fields,
    when,
)

app = typer.Typer(
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

RunArg = Annotated[str, typer.Argument(help="run id (run_…)")]
WaitOption = Annotated[bool, typer.Option("--wait", help="follow the run live until it ends")]
TimeoutOption = Annotated[int, duration_option("3600", "stop following after this long")]


def run_path(run_id: str, tail: str = "") -> str:
    return f"/v1/runs/{quote(run_id, safe='')}{tail}"


def state_text(state: str) -> Text:
    return Text(state, STATE_STYLES.get(state, ""))


def at_text(unix: float | None) -> str:
    return when(None if unix is None else int(unix))


def render_run(run: dict[str, Any], *, detail: bool = False) -> Group:
    """A run as people read it: where it stands, then one row per task."""
    head: list[tuple[str, object]] = [
        ("run", run["id"]),
        ("workflow", f"{run['workflow']} version {run['workflow_version']}"),
        ("state", state_text(run["state"])),
    ]
    if detail:
        head += [
            ("trigger", f"{run['trigger']} by {run['created_by'] or '-'}"),
            ("priority", run["priority"]),
            ("deadline", at_text(run["deadline"])),
            ("created", at_text(run["created_at"])),
            ("finished", at_text(run["finished_at"])),
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
        row = (state_text(task["state"]), str(task["attempts"]), _duration(task), cell(error))
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


def follow_run(remote: Remote, run_id: str, timeout_s: int) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with Live(console=out, auto_refresh=False) as live:
        while True:
            run: dict[str, Any] = remote.call("GET", run_path(run_id))
            live.update(render_run(run), refresh=True)
            left_s = deadline - time.monotonic()
            if run["state"] in FINISHED or left_s <= 0:
                break
            time.sleep(min(POLL_S, left_s))
    if not out.is_terminal:
        out.line()  # Rich leaves a Live drawn to a pipe or file without its final newline
    return run


def exit_for(run: dict[str, Any], timeout_s: int) -> NoReturn:
    """Print how a followed run ended and exit with its status."""
    if run["state"] not in FINISHED:
        fail(f"run {run['id']} is still {run['state']} after {timeout_s} s; stopped following")
        raise typer.Exit(2)
    print_outputs(run)
    out.print(Text(f"run {run['id']} {run['state']}", STATE_STYLES.get(run["state"], "")))
    raise typer.Exit(0 if run["state"] == "succeeded" else 1)


def print_outputs(run: dict[str, Any]) -> None:
    if run["outputs"]:
        out.print(Text("outputs", "bold"))
        out.print(fields(*run["outputs"].items()))


# -- runs --------------------------------------------------------------------------------------


@app.command("list")
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
        tail = (cell(run["trigger"]), at_text(run["created_at"]), _elapsed(run), cell(run["error"]))
        table.add_row(*head, state_text(run["state"]), *tail)
    out.print(table)


@app.command("show")
def show_run(run_id: RunArg, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Show a run: its inputs, tasks (with errors and idempotency keys) and outputs."""
    with connect(url, api_key) as remote:
        run = remote.call("GET", run_path(run_id))
    out.print(render_run(run, detail=True))
    print_outputs(run)


@app.command("watch")
def watch(
    run_id: RunArg,
    timeout: TimeoutOption = 3600,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Follow a run live until it ends (or ``--timeout`` passes)."""
    with connect(url, api_key) as remote:
        run = follow_run(remote, run_id, timeout)
    exit_for(run, timeout)


@app.command("cancel")
def cancel(run_id: RunArg, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Cancel an unfinished run: its unfinished tasks are cancelled, running ones interrupted."""
    with connect(url, api_key) as remote:
        run = remote.call("POST", run_path(run_id, "/cancel"))
    err.print(f"Run {escape(run['id'])} is now {run['state']}.")


@app.command("retry")
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
        run = remote.call("POST", run_path(run_id, "/retry"))
        err.print(f"Run {escape(run['id'])} is {run['state']} again from its failed tasks.")
        if wait:
            exit_for(follow_run(remote, run_id, timeout), timeout)


@app.command("approve")
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
            "POST", run_path(run_id, f"/tasks/{quote(task_id, safe='')}/approve"), json=body
        )
    decision = "rejected" if reject else "approved"
    err.print(
        f"Task {escape(task['task_id'])} of run {escape(run_id)} {decision} ({task['state']})."
    )
