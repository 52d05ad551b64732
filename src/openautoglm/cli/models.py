"""``autoglm models``: the model registry of a running server, over HTTP with your own key.

Register models and versions, move versions through their lifecycle (four-eyes approval: the
key that submits a version cannot approve it), move aliases, run validations through the
server's gateway and compare their metrics. Exit status: 0 done, 1 the server refused (its
message is printed), 2 bad input; ``validate`` exits 0 passed, 1 failed, 2 error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from openautoglm.cli.common import err, out
from openautoglm.cli.registry_args import (
    GateOption,
    NameArg,
    ReasonOption,
    VersionArg,
    model_path,
    print_metrics,
)
from openautoglm.cli.remote import (
    DEFAULT_URL,
    ApiKeyOption,
    UrlOption,
    cell,
    connect,
    fields,
    parse_pairs,
    when,
)
from openautoglm.cli.validations import compare, validate

app = typer.Typer(
    help="Register, validate, approve and compare model versions (on a running server).",
    no_args_is_help=True,
)

SPEC_KEYS = frozenset({"instances", "parameters", "tags", "lineage", "description"})


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
            _print_version(remote.call("GET", model_path(name, version)))
            return
        model = remote.call("GET", model_path(name))
        versions = remote.call("GET", f"{model_path(name)}/versions")["data"]
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
        print_metrics(found["evaluation"], "latest evaluation")
    history = Table("at", "from", "to", "actor", "reason", title="history", title_justify="left")
    for move in found.get("history") or ():
        row = (move["from_state"], move["to_state"], move["actor"], move["reason"])
        history.add_row(when(move["at"]), *map(cell, row))
    out.print(history)


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
        added = remote.call("POST", f"{model_path(name)}/versions", json=body)
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
            f"{model_path(name, version)}/transitions",
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
        aliases = remote.call("PUT", f"{model_path(name)}/aliases", json=body)
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(aliases.items())) or "none"
    err.print(f"{escape(name)} aliases: {escape(shown)}.")


# -- validation and comparison -----------------------------------------------------------------

app.command("validate")(validate)
app.command("compare")(compare)
