"""``autoglm models``: the model registry of a running server, over HTTP with your own key.

Register models and versions, move versions through their lifecycle (four-eyes approval: the
key that submits a version cannot approve it), move aliases, run validations through the
server's gateway and compare their metrics. Exit status: 0 done, 1 the server refused (its
message is printed), 2 bad input; ``validate`` exits 0 passed, 1 failed, 2 error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
import yaml
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
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
    number,
    parse_pairs,
    when,
)

app = typer.Typer(
    help="Register, validate, approve and compare model versions (on a running server).",
    no_args_is_help=True,
)

POLL_S = 0.2
SPEC_KEYS = frozenset({"instances", "parameters", "tags", "lineage", "description"})
EXIT_BY_STATUS = {"passed": 0, "failed": 1, "error": 2}

NameArg = Annotated[str, typer.Argument(help="model name")]
VersionArg = Annotated[str, typer.Argument(help="version")]
ReasonOption = Annotated[str | None, typer.Option(help="why (kept in the version's history)")]
GateOption = Annotated[
    list[str] | None,
    typer.Option("--gate", help="METRIC=EXPR, e.g. accuracy='>=0.8' (repeatable)"),
]


def _path(name: str, version: str | None = None) -> str:
    path = f"/v1/registry/models/{quote(name, safe='')}"
    return path if version is None else f"{path}/versions/{quote(version, safe='')}"


@app.command("list")
def list_models(url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """List registered models with their aliases and gates."""
    with connect(url, api_key) as remote:
        models = remote.call("GET", "/v1/registry/models")["data"]
    table = Table("name", "champion", "challenger", "gates", "description")
    for model in models:
        aliases = model["aliases"]
        row = (model["name"], aliases.get("champion"), aliases.get("challenger"), model["gates"])
        table.add_row(*map(cell, row), cell(model["description"]))
    out.print(table)


@app.command("show")
def show(
    name: NameArg,
    version: Annotated[str | None, typer.Argument(help="version (default: the model)")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a model and its versions, or one version in full."""
    with connect(url, api_key) as remote:
        if version is not None:
            _print_version(remote.call("GET", _path(name, version)))
            return
        model = remote.call("GET", _path(name))
        versions = remote.call("GET", f"{_path(name)}/versions")["data"]
    out.print(
        fields(
            ("model", model["name"]),
            ("description", model["description"]),
            ("gates", model["gates"]),
            ("thresholds", model["thresholds"]),
            ("created", f"{when(model['created_at'])} by {model['created_by'] or '-'}"),
        )
    )
    roles = {target: alias for alias, target in model["aliases"].items()}
    table = Table("version", "state", "alias", "created", "by", "description")
    for v in versions:
        rest = (when(v["created_at"]), v["created_by"], v["description"])
        table.add_row(*map(cell, (v["version"], v["state"], roles.get(v["version"]), *rest)))
    out.print(table)


def _print_version(found: dict[str, Any]) -> None:
    out.print(
        fields(
            ("model", found["model"]),
            ("version", found["version"]),
            ("state", found["state"]),
            ("allowed next", ", ".join(found["allowed_next"]) or "nothing (final)"),
            ("description", found["description"]),
            ("created", f"{when(found['created_at'])} by {found['created_by'] or '-'}"),
            ("submitted by", found["submitted_by"]),
            ("parameters", found["parameters"]),
            ("tags", found["tags"]),
            ("lineage", found["lineage"]),
            *((f"instance {i}", spec) for i, spec in enumerate(found["instances"], start=1)),
        )
    )
    if found.get("evaluation"):
        _print_metrics(found["evaluation"], "latest evaluation")
    history = Table("at", "from", "to", "actor", "reason", title="history", title_justify="left")
    for move in found.get("history") or ():
        row = (move["from_state"], move["to_state"], move["actor"], move["reason"])
        history.add_row(when(move["at"]), *map(cell, row))
    out.print(history)


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table("metric", "value", title=title, title_justify="left")
    for metric, value in metrics.items():
        table.add_row(metric, number(value))
    out.print(table)


@app.command("register")
def register(
    name: NameArg,
    description: Annotated[str | None, typer.Option(help="what the model is for")] = None,
    gate: GateOption = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="release analysis default KEY=VALUE, e.g. max_error_rate=0.02"),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Register a model, with its validation gates and release thresholds."""
    body = {
        "name": name,
        "description": description,
        "gates": parse_pairs(gate, "--gate"),
        "thresholds": parse_pairs(threshold, "--threshold", typed=True),
    }
    with connect(url, api_key) as remote:
        model = remote.call("POST", "/v1/registry/models", json=body)
    gates = ", ".join(f"{k} {v}" for k, v in model["gates"].items()) or "none"
    err.print(f"Registered model {escape(model['name'])} (gates: {escape(gates)}).")


@app.command("add-version")
def add_version(
    name: NameArg,
    version: VersionArg,
    spec: Annotated[
        Path | None,
        typer.Option(help="YAML/JSON: a list of instances, or {instances, parameters, tags, …}"),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="one instance of this backend (instead of --spec)")
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="instance setting KEY=VALUE for --backend; JSON values are decoded (repeatable)",
        ),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="tag KEY=VALUE (repeatable)")] = None,
    commit: Annotated[str | None, typer.Option(help="source commit (lineage)")] = None,
    pipeline_run: Annotated[str | None, typer.Option(help="pipeline run id (lineage)")] = None,
    description: Annotated[str | None, typer.Option(help="what changed")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Add a version (in development), served by the instances given."""
    if (spec is None) == (backend is None):
        raise typer.BadParameter("give exactly one of --spec and --backend", param_hint="--spec")
    if spec is not None:
        body = _load_spec(spec)
        if setting:
            raise typer.BadParameter("--set goes with --backend", param_hint="--set")
    else:
        body = {"instances": [{"backend": backend, **parse_pairs(setting, "--set", typed=True)}]}
    body["version"] = version
    body["tags"] = {**body.get("tags", {}), **parse_pairs(tag, "--tag")}
    lineage = {"commit": commit, "pipeline_run": pipeline_run}
    body["lineage"] = {**body.get("lineage", {}), **{k: v for k, v in lineage.items() if v}}
    if description is not None:
        body["description"] = description
    with connect(url, api_key) as remote:
        added = remote.call("POST", f"{_path(name)}/versions", json=body)
    count = len(added["instances"])
    err.print(
        f"Added {escape(name)} version {escape(added['version'])} ({added['state']}, "
        f"{count} instance{'s' if count != 1 else ''})."
    )


def _load_spec(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--spec") from exc
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{path} is not YAML or JSON: {exc}", param_hint="--spec") from exc
    if isinstance(data, list):
        return {"instances": data}
    if not isinstance(data, dict) or "instances" not in data:
        raise typer.BadParameter(
            f"{path} must hold a list of instances or a mapping with 'instances'",
            param_hint="--spec",
        )
    unknown = sorted(str(key) for key in data if key not in SPEC_KEYS)
    if unknown:
        raise typer.BadParameter(
            f"{path}: unknown key(s) {unknown}; known: {sorted(SPEC_KEYS)}", param_hint="--spec"
        )
    return dict(data)


# -- lifecycle ---------------------------------------------------------------------------------


def _move(
    name: str, version: str, state: str, reason: str | None, url: str, api_key: str | None
) -> None:
    with connect(url, api_key) as remote:
        moved = remote.call(
            "POST",
            f"{_path(name, version)}/transitions",
            json={"to": state, "reason": reason},
        )
    following = ", ".join(moved["allowed_next"]) or "nothing (final)"
    err.print(f"{escape(name)} version {escape(version)} is now {moved['state']}.")
    err.print(f"Next: {following}.", style="dim")


def _lifecycle_command(command: str, state: str, summary: str) -> None:
    def move(
        name: NameArg,
        version: VersionArg,
        reason: ReasonOption = None,
        url: UrlOption = DEFAULT_URL,
        api_key: ApiKeyOption = None,
    ) -> None:
        _move(name, version, state, reason, url, api_key)

    move.__name__ = command
    app.command(command, help=summary)(move)


for _command, _state, _summary in (
    ("submit", "pending_approval", "Submit a version for approval (pending_approval)."),
    ("approve", "deployed", "Approve a submitted version (deployed): needs approve_models, "
     "and a key other than the submitter's."),
    ("deprecate", "deprecated", "Deprecate a version (it stops serving)."),
    ("archive", "archived", "Archive a deprecated version (final)."),
):  # fmt: skip
    _lifecycle_command(_command, _state, _summary)


@app.command("reject")
def reject(
    name: NameArg,
    version: VersionArg,
    reason: Annotated[str, typer.Option(help="why (required)")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Send a submitted version back to development."""
    _move(name, version, "development", reason, url, api_key)


@app.command("transition")
def transition(
    name: NameArg,
    version: VersionArg,
    state: Annotated[str, typer.Argument(help="target state, e.g. monitoring")],
    reason: ReasonOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Move a version to any state its lifecycle allows."""
    _move(name, version, state, reason, url, api_key)


@app.command("alias")
def alias(
    name: NameArg,
    champion: Annotated[str | None, typer.Option(help="version to serve the model")] = None,
    challenger: Annotated[str | None, typer.Option(help="version to mark challenger")] = None,
    remove_challenger: Annotated[bool, typer.Option(help="drop the challenger alias")] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Move the champion or challenger alias, or remove the challenger."""
    if champion is None and challenger is None and not remove_challenger:
        raise typer.BadParameter(
            "give --champion, --challenger or --remove-challenger", param_hint="--champion"
        )
    body = {
        "champion": champion,
        "challenger": challenger,
        "remove": ["challenger"] if remove_challenger else [],
    }
    with connect(url, api_key) as remote:
        aliases = remote.call("PUT", f"{_path(name)}/aliases", json=body)
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(aliases.items())) or "none"
    err.print(f"{escape(name)} aliases: {escape(shown)}.")


# -- validation and comparison -----------------------------------------------------------------


@app.command("validate")
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
        run = remote.call("POST", f"{_path(name, version)}/validations", json=body)
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
        _print_metrics(run["metrics"], f"metrics ({run['total']} items)")
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


@app.command("compare")
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
            "GET", f"{_path(name)}/compare", params={"versions": ",".join(versions)}
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
