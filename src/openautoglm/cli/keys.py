"""``autoglm keys``: issue and list API keys directly in the store."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from openautoglm.cli.common import ConfigOption, err, settings_or_exit
from openautoglm.config.settings import Settings
from openautoglm.core.clock import SystemClock
from openautoglm.core.errors import OpenAutoGLMError
from openautoglm.store.database import open_database
from openautoglm.store.tenancy_sql import SqlTenancyStore
from openautoglm.tenancy.model import IssuedKey, Role
from openautoglm.tenancy.service import DEFAULT_TENANT, TenancyService

app = typer.Typer(help="Create and list API keys.", no_args_is_help=True)
out = Console()


async def _issue(
    settings: Settings,
    tenant: str,
    role: Role,
    name: str,
    models: tuple[str, ...] | None,
    expires_days: float | None,
) -> IssuedKey:
    engine = await open_database(settings.resolved_database_url)
    try:
        clock = SystemClock()
        service = TenancyService(SqlTenancyStore(engine), clock)
        expires_at = clock.now() + timedelta(days=expires_days) if expires_days else None
        return await service.issue_key(
            tenant, role, name=name, allowed_models=models, expires_at=expires_at
        )
    finally:
        await engine.dispose()


@app.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="tenant name")] = DEFAULT_TENANT,
    role: Annotated[Role, typer.Option(help="role of the key")] = Role.DEVELOPER,
    name: Annotated[str, typer.Option(help="a label for the key")] = "",
    models: Annotated[
        str | None, typer.Option(help="comma-separated models the key may use")
    ] = None,
    expires_days: Annotated[
        float | None, typer.Option(min=0.001, help="expire after N days")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Issue a key; the secret is printed once and never stored."""
    allowed = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None
    try:
        issued = asyncio.run(
            _issue(settings_or_exit(config), tenant, role, name, allowed, expires_days)
        )
    except OpenAutoGLMError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    err.print(
        f"Created key {issued.key.id} ({issued.key.role.value}) for tenant '{tenant}'. Shown once:"
    )
    print(issued.secret)


async def _list(settings: Settings, tenant: str) -> list[list[str]]:
    engine = await open_database(settings.resolved_database_url)
    try:
        store = SqlTenancyStore(engine)
        found = await store.tenant_by_name(tenant)
        if found is None:
            raise typer.BadParameter(f"tenant '{tenant}' does not exist", param_hint="--tenant")
        rows = []
        for key in await store.keys_of_tenant(found.id):
            state = "revoked" if key.revoked_at else "active"
            models = ",".join(key.allowed_models) if key.allowed_models is not None else "*"
            expires = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "-"
            rows.append(
                [key.id, key.prefix + "…", key.role.value, key.name, models, expires, state]
            )
        return rows
    finally:
        await engine.dispose()


@app.command("list")
def list_keys(
    tenant: Annotated[str, typer.Option(help="tenant name")] = DEFAULT_TENANT,
    config: ConfigOption = None,
) -> None:
    """List a tenant's keys (prefixes only; secrets are never stored)."""
    table = Table(
        Column("id", no_wrap=True),
        Column("prefix", no_wrap=True),
        "role",
        "name",
        "models",
        "expires",
        "state",
    )
    for row in asyncio.run(_list(settings_or_exit(config), tenant)):
        table.add_row(*row)
    out.print(table)
