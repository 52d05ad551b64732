"""Arguments and small helpers the ``autoglm models`` commands share."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from openautoglm.cli.common import out
from openautoglm.cli.remote import number

NameArg = Annotated[str, typer.Argument(help="model name")]
VersionArg = Annotated[str, typer.Argument(help="version")]
ReasonOption = Annotated[str | None, typer.Option(help="why (kept in the version's history)")]
GateOption = Annotated[
    list[str] | None,
    typer.Option("--gate", help="METRIC=EXPR, e.g. accuracy='>=0.8' (repeatable)"),
]


def model_path(name: str, version: str | None = None) -> str:
    path = f"/v1/registry/models/{quote(name, safe='')}"
    return path if version is None else f"{path}/versions/{quote(version, safe='')}"


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table("metric", "value", title=title, title_justify="left")
    for metric, value in metrics.items():
        table.add_row(metric, number(value))
    out.print(table)
