"""``autoglm releases``: canary releases on a running server, over HTTP with your own key.

Start a release of an approved version, follow its live analysis (stable against candidate),
and steer it: pause, resume, promote, abort, roll back. Exit status: 0 done, 1 the server
refused (its message is printed), 2 bad input; ``watch`` exits 0 when the release was promoted,
1 when it was rolled back or aborted, 2 when it was still going at ``--timeout``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any
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
    UrlOption,
    cell,
    connect,
    duration_option,
    fail,
    fields,
    number,
    parse_pairs,
    when,
)

app = typer.Typer(
    help="Start, follow and steer canary releases (on a running server).", no_args_is_help=True
)

ACTIVE = frozenset({"running", "paused"})
STATE_STYLES = {
    "running": "bold cyan",
    "paused": "bold yellow",
    "promoted": "bold green",
    "rolled_back": "bold red",
    "aborted": "bold red",
}
VERDICT_STYLES = {"pass": "bold green", "fail": "bold red", "inconclusive": "yellow"}

IdArg = Annotated[str, typer.Argument(help="release id (rel_…)")]
ReasonOption = Annotated[str | None, typer.Option(help="why (kept with the release)")]


def _path(release_id: str, action: str = "") -> str:
    return f"/v1/releases/{quote(release_id, safe='')}" + (f"/{action}" if action else "")


def _parse_steps(text: str) -> list[float]:
    try:
        return [float(part.strip().rstrip("%")) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is not comma-separated percentages like 10,25,50,100",
            param_hint="--steps",
        ) from exc


@app.command("start")
def start(
    name: Annotated[str, typer.Argument(help="model name")],
    candidate: Annotated[str, typer.Option(help="the approved version to roll out")],
    steps: Annotated[
        str | None,
        typer.Option(
            help="the candidate's percent of traffic at each step", show_default="10,25,50,100"
        ),
    ] = None,
    interval: Annotated[int, duration_option("1m", "how long each step lasts, e.g. 30s, 5m")] = 60,
    shadow: Annotated[
        bool, typer.Option(help="first mirror idempotent requests to the candidate")
    ] = False,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="analysis threshold KEY=VALUE, e.g. max_error_rate=0.02 (repeatable)"),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Start moving a model's traffic from its champion to an approved candidate.

    Prints the release id on stdout.
    """
    body: dict[str, Any] = {
        "model": name,
        "candidate": candidate,
        "interval_s": interval,
        "shadow": shadow,
        "thresholds": parse_pairs(threshold, "--threshold", typed=True),
    }
    if steps is not None:
        body["steps"] = _parse_steps(steps)
    with connect(url, api_key) as remote:
        release = remote.call("POST", "/v1/releases", json=body)
    plan = ", ".join(f"{step:g}%" for step in release["steps"])
    err.print(
        f"Started {escape(release['model'])}: {escape(release['stable'])} → "
        f"{escape(release['candidate'])}, steps {plan} every {release['interval_s']} s"
        + (" after a shadow phase" if release["shadow"] else "")
        + ".",
        soft_wrap=True,
    )
    print(release["id"])


@app.command("list")
def list_releases(
    model: Annotated[str | None, typer.Option(help="only this model's releases")] = None,
    active: Annotated[bool, typer.Option(help="only running or paused releases")] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """List releases, newest first."""
    params: dict[str, Any] = {"active": active}
    if model is not None:
        params["model"] = model
    with connect(url, api_key) as remote:
        releases = remote.call("GET", "/v1/releases", params=params)["data"]
    if not releases:
        err.print("No releases.")
        return
    table = Table("id", "model", "state", "stable", "candidate", "weight", "started", "reason")
    for release in releases:
        table.add_row(
            cell(release["id"]),
            cell(release["model"]),
            Text(release["state"], STATE_STYLES.get(release["state"], "")),
            cell(release["stable"]),
            cell(release["candidate"]),
            f"{release['weight']:g}%",
            when(release["started_at"]),
            cell(release["reason"]),
        )
    out.print(table)


@app.command("status")
def status(release_id: IdArg, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Show a release: its state, step and the live analysis of both versions."""
    with connect(url, api_key) as remote:
        release = remote.call("GET", _path(release_id))
    out.print(render(release))


@app.command("watch")
def watch(
    release_id: IdArg,
    interval: Annotated[int, duration_option("1s", "refresh every")] = 1,
    timeout: Annotated[int, duration_option("3600", "stop watching after this long")] = 3600,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Follow a release until it ends (or ``--timeout`` passes)."""
    deadline = time.monotonic() + timeout
    with connect(url, api_key) as remote, Live(console=out, auto_refresh=False) as live:
        while True:
            release = remote.call("GET", _path(release_id))
            live.update(render(release), refresh=True)
            left_s = deadline - time.monotonic()
            if release["state"] not in ACTIVE or left_s <= 0:
                break
            time.sleep(min(interval, left_s))
    if release["state"] in ACTIVE:
        fail(f"release {release_id} is still {release['state']} after {timeout} s")
        raise typer.Exit(2)
    raise typer.Exit(0 if release["state"] == "promoted" else 1)


def render(release: dict[str, Any]) -> Group:
    """A release as people read it: what it is, where it stands, and how both versions do."""
    if release["step"] < 0:
        at = "shadow phase (candidate gets copies, no live traffic)"
    else:
        at = f"{release['step'] + 1} of {len(release['steps'])}"
    head = fields(
        ("release", release["id"]),
        ("model", release["model"]),
        ("state", Text(release["state"], STATE_STYLES.get(release["state"], ""))),
        ("stable", release["stable"]),
        ("candidate", release["candidate"]),
        ("step", f"{at}, candidate weight {release['weight']:g}%"),
        ("steps", ", ".join(f"{s:g}%" for s in release["steps"])),
        ("interval", f"{release['interval_s']} s"),
        ("started", f"{when(release['started_at'])} by {release['started_by'] or '-'}"),
        ("finished", when(release["finished_at"])),
        ("reason", release["reason"]),
    )
    analysis = release.get("analysis")
    if not analysis:
        return Group(head)
    return Group(head, _analysis_table(analysis), *_verdict_lines(analysis["verdict"]))


def _analysis_table(analysis: dict[str, Any]) -> Table:
    window_s = analysis["stable"]["window_s"]
    table = Table(
        "",
        "version",
        "requests",
        "error rate",
        "p99 latency (s)",
        "p99 TTFT (s)",
        "policy block rate",
        title=f"last {window_s:g} s",
        title_justify="left",
    )
    for role in ("stable", "candidate"):
        stats = analysis[role]
        requests = str(stats["requests"])
        if stats.get("shadow_requests"):
            requests += f" ({stats['shadow_requests']} shadow)"
        table.add_row(
            role,
            cell(stats["version"]),
            requests,
            f"{stats['error_rate']:.1%}",
            number(stats["p99_latency_s"]),
            number(stats["p99_ttft_s"]),
            f"{stats['policy_block_rate']:.1%}",
        )
    return table


def _verdict_lines(verdict: dict[str, Any]) -> list[Text]:
    lines = [
        Text.assemble(
            ("verdict: ", "bold"), (verdict["status"], VERDICT_STYLES.get(verdict["status"], ""))
        )
    ]
    lines += [Text(f"  - {breach}", "red") for breach in verdict["breaches"]]
    return lines


def _act(release_id: str, action: str, reason: str | None, url: str, key: str | None) -> None:
    with connect(url, key) as remote:
        body = {"reason": reason} if reason is not None else None
        release = remote.call("POST", _path(release_id, action), json=body)
    weight = f"candidate weight {release['weight']:g}%"
    err.print(f"Release {escape(release['id'])} is now {release['state']} ({weight}).")


@app.command("pause")
def pause(release_id: IdArg, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Hold a release at its step (analysis and automatic rollback go on)."""
    _act(release_id, "pause", None, url, api_key)


@app.command("resume")
def resume(release_id: IdArg, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Continue a paused release."""
    _act(release_id, "resume", None, url, api_key)


@app.command("promote")
def promote(release_id: IdArg, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Make the candidate the champion now, skipping the remaining steps."""
    _act(release_id, "promote", None, url, api_key)


@app.command("abort")
def abort(
    release_id: IdArg,
    reason: ReasonOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Stop a release: all traffic back to stable; the candidate stays approved."""
    _act(release_id, "abort", reason, url, api_key)


@app.command("rollback")
def rollback(
    release_id: IdArg,
    reason: ReasonOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Go back to the previous stable version at once (also after a promotion)."""
    _act(release_id, "rollback", reason, url, api_key)
