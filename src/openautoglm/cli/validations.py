"""``autoglm models validate`` and ``autoglm models compare``: validation runs on the server.

``validate`` sends a JSONL evaluation set, follows the run with a progress bar and prints its
metrics and gates; it exits 0 when the run passed, 1 when a gate failed, 2 on an error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from openautoglm.cli.common import err, out
from openautoglm.cli.registry_args import (
    GateOption,
    NameArg,
    VersionArg,
    model_path,
    print_metrics,
)
from openautoglm.cli.remote import (
    DEFAULT_URL,
    ApiKeyOption,
    Remote,
    UrlOption,
    connect,
    duration_option,
    fail,
    number,
    parse_pairs,
)

POLL_S = 0.2
EXIT_BY_STATUS = {"passed": 0, "failed": 1, "error": 2}


def validate(
    name: NameArg,
    version: VersionArg,
    dataset: Annotated[Path, typer.Option(help="evaluation set, JSON Lines")],
    gate: GateOption = None,
    judge_model: Annotated[str | None, typer.Option(help="model that grades judge items")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="items in flight")] = 4,
    wait: Annotated[bool, typer.Option(help="follow the run until it ends")] = True,
    timeout: Annotated[int, duration_option("2h", "stop following after this long")] = 7200,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Run an evaluation set against a version through the gateway and check its gates.

    A run that passes moves a version in development to pending_approval (submitted by you).
    Without ``--no-wait``: exit 0 passed, 1 failed, 2 error.
    """
    try:
        text = dataset.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read dataset {dataset}: {getattr(exc, 'strerror', None) or exc}")
        raise typer.Exit(2) from exc
    body = {
        "dataset_jsonl": text,
        "gates": parse_pairs(gate, "--gate") if gate else None,
        "judge_model": judge_model,
        "concurrency": concurrency,
    }
    with connect(url, api_key) as remote:
        run = remote.call("POST", f"{model_path(name, version)}/validations", json=body)
        if not wait:
            print(run["id"])
            return
        run = _follow(remote, run, timeout)
    _print_run(run)
    raise typer.Exit(EXIT_BY_STATUS[run["status"]])


def _follow(remote: Remote, run: dict[str, Any], timeout_s: int) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    label = escape(f"validating {run['model']} {run['version']}")
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task(label, total=run["total"], completed=run["done"])
        while run["status"] == "running":
            if time.monotonic() > deadline:
                progress.stop()
                fail(f"run {run['id']} is still running after {timeout_s} s; stopped following")
                raise typer.Exit(2)
            time.sleep(POLL_S)
            run = remote.call("GET", f"/v1/registry/validations/{quote(run['id'], safe='')}")
            progress.update(task, completed=run["done"])
    return run


def _print_run(run: dict[str, Any]) -> None:
    if run["metrics"]:
        print_metrics(run["metrics"], f"metrics ({run['total']} items)")
    if run["gate_results"]:
        gates = Table("gate", "value", "result", title="gates", title_justify="left")
        for result in run["gate_results"]:
            verdict = Text("pass", "green") if result["passed"] else Text("FAIL", "bold red")
            gates.add_row(
                f"{result['metric']} {result['op']} {result['threshold']:g}",
                number(result["value"]),
                verdict,
            )
        out.print(gates)
    styles = {"passed": "bold green", "failed": "bold red", "error": "bold red"}
    line = Text(f"validation {run['id']} {run['status']}", styles[run["status"]])
    if run["error"]:
        line.append(f": {run['error']}")
    out.print(line)


def compare(
    name: NameArg,
    versions: Annotated[list[str], typer.Argument(help="two or more versions")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Compare the newest finished validation run of each version, metric by metric."""
    if len(versions) < 2:
        raise typer.BadParameter("compare at least two versions", param_hint="VERSIONS")
    with connect(url, api_key) as remote:
        found = remote.call(
            "GET", f"{model_path(name)}/compare", params={"versions": ",".join(versions)}
        )
    table = Table("metric", *found["versions"])
    for row in found["rows"]:
        # A tie has no winner worth pointing at, though the server still names the first.
        best = row["best"] if len(set(row["values"])) > 1 else None
        table.add_row(
            row["metric"],
            *(
                Text(number(v), "bold green" if i == best else "")
                for i, v in enumerate(row["values"])
            ),
        )
    table.add_section()
    table.add_row("run", *found["runs"], style="dim")
    out.print(table)
    if not found["same_dataset"]:
        err.print(
            "[yellow]warning:[/yellow] the runs used different datasets; "
            "the numbers are not directly comparable",
            soft_wrap=True,
        )
