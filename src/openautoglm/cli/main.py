"""``autoglm``: serve the engine, manage keys, print the version."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from openautoglm.cli import audit, keys, models, policies, releases, runs, tenants, workflows
from openautoglm.cli.common import ConfigOption, err, settings_or_exit
from openautoglm.core.version import __version__

app = typer.Typer(help="Open-AutoGLM: a self-hosted enterprise LLM engine.", no_args_is_help=True)
app.add_typer(keys.app, name="keys")
app.add_typer(tenants.app, name="tenants")
app.add_typer(policies.app, name="policies")
app.add_typer(audit.app, name="audit")
app.add_typer(models.app, name="models")
app.add_typer(releases.app, name="releases")
app.add_typer(workflows.app, name="workflows")
app.add_typer(runs.app, name="runs")


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="listen address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="listen port (default 8000)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
) -> None:
    """Serve the OpenAI-compatible and native APIs."""
    import uvicorn

    settings = settings_or_exit(config)
    server = settings.server.model_copy(
        update={
            k: v
            for k, v in {"host": host, "port": port, "workers": workers}.items()
            if v is not None
        }
    )
    settings = settings.model_copy(update={"server": server})
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    common = {
        "host": server.host,
        "port": server.port,
        "log_level": settings.log_level,
        "access_log": server.access_log,
        "http": "httptools",
        "loop": "uvloop",
        "timeout_graceful_shutdown": 10,
    }
    err.print(f"Open-AutoGLM {__version__} on http://{server.host}:{server.port} (docs at /docs)")
    if server.workers == 1:
        from openautoglm.api.app import create_app

        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    # Worker processes build their own app from the environment: hand the overrides down.
    if config is not None:
        os.environ["AUTOGLM_CONFIG"] = str(config.resolve())
    os.environ["AUTOGLM_SERVER__HOST"] = server.host
    os.environ["AUTOGLM_SERVER__PORT"] = str(server.port)
    uvicorn.run(
        "openautoglm.api.app:app_from_environment",
        factory=True,
        workers=server.workers,
        **common,  # type: ignore[arg-type]
    )


def main() -> None:
    app()
