"""What every ``autoglm`` command shares: the config option and loading settings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from openautoglm.config.settings import ConfigError, Settings, load_settings

err = Console(stderr=True)
# Piped output (scripts, CI) gets wide tables instead of 80-column wrapping.
out = Console(width=None if sys.stdout.isatty() else 200)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (default: $AUTOGLM_CONFIG)",
        exists=True,
        dir_okay=False,
    ),
]


def settings_or_exit(config: Path | None) -> Settings:
    """Load settings, or print why they are invalid and exit with status 2."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
