"""``autoglm keys``: issue, list, revoke and rotate API keys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from rich.table import Column, Table

from openautoglm.cli.common import ConfigOption, err, out, settings_or_exit
from openautoglm.cli.session import OPERATOR, admin_session, audit_cli_action
from openautoglm.core.errors import OpenAutoGLMError
from openautoglm.tenancy.admin import TenancyAdmin
from openautoglm.tenancy.model import ApiKey, IssuedKey, Permission, Role
from openautoglm.tenancy.service import DEFAULT_TENANT

app = typer.Typer(help="Create, list, revoke and rotate API keys.", no_args_is_help=True)
T = TypeVar("T")

TenantOption = Annotated[str, typer.Option(help="tenant name")]


def run_admin(
    config: object, action: Callable[[TenancyAdmin], Awaitable[T]], audit: str | None = None
) -> T:
    """Run one admin action against the store; errors become a message and exit status 1.
    A change (``audit``: its action name) is recorded in the audit log."""

    async def main() -> T:
        settings = settings_or_exit(config)  # type: ignore[arg-type]
        async with admin_session(settings) as admin:
            result = await action(admin)
        if audit is not None:
            await audit_cli_action(settings, audit, result)
        return result

    try:
        return asyncio.run(main())
    except OpenAutoGLMError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(n.strip() for n in text.split(",") if n.strip()) if text else None


def _print_secret(issued: IssuedKey, tenant: str) -> None:
    key = issued.key
    err.print(f"Created key {key.id} ({key.role.value}) for tenant '{tenant}'. Shown once:")
    print(issued.secret)


@app.command("create")
def create(
    tenant: TenantOption = DEFAULT_TENANT,
    role: Annotated[Role, typer.Option(help="role of the key")] = Role.DEVELOPER,
    name: Annotated[str, typer.Option(help="a label for the key")] = "",
    models: Annotated[
        str | None, typer.Option(help="comma-separated models the key may use")
    ] = None,
    regions: Annotated[str | None, typer.Option(help="comma-separated regions it may use")] = None,
    rpm: Annotated[int | None, typer.Option(help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute")] = None,
    expires_days: Annotated[
        float | None, typer.Option(min=0.001, help="expire after N days")
    ] = None,
    permission: Annotated[
        list[Permission] | None,
        typer.Option(help="a right beyond the role (repeatable), e.g. approve_models"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Issue a key; the secret is printed once and never stored."""
    limits = {k: v for k, v in {"requests_per_minute": rpm, "tokens_per_minute": tpm}.items() if v}

    async def action(admin: TenancyAdmin) -> IssuedKey:
        found = await admin.tenant_named(OPERATOR, tenant)
        expires_at = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
        return await admin.issue_key(
            OPERATOR,
            found.id,
            role,
            name=name,
            allowed_models=_names(models),
            allowed_regions=_names(regions),
            limits=limits or None,
            expires_at=expires_at,
            permissions=frozenset(permission or ()),
        )

    _print_secret(run_admin(config, action, "key.created"), tenant)


@app.command("list")
def list_keys(tenant: TenantOption = DEFAULT_TENANT, config: ConfigOption = None) -> None:
    """List a tenant's keys (prefixes only; secrets are never stored)."""

    async def action(admin: TenancyAdmin) -> list[ApiKey]:
        return await admin.list_keys(OPERATOR, (await admin.tenant_named(OPERATOR, tenant)).id)

    table = Table(
        Column("id", no_wrap=True),
        Column("prefix", no_wrap=True),
        "role",
        "name",
        "models",
        "permissions",
        "expires",
        "state",
    )
    for key in run_admin(config, action):
        state = "revoked" if key.revoked_at else "active"
        models = ",".join(key.allowed_models) if key.allowed_models is not None else "*"
        expires = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "-"
        permissions = ",".join(sorted(key.permissions)) or "-"
        table.add_row(
            key.id, key.prefix + "…", key.role.value, key.name, models, permissions, expires, state
        )
    out.print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="key id (key_…)")],
    tenant: TenantOption = DEFAULT_TENANT,
    config: ConfigOption = None,
) -> None:
    """Revoke a key now."""

    async def action(admin: TenancyAdmin) -> ApiKey:
        return await admin.revoke_key(
            OPERATOR, (await admin.tenant_named(OPERATOR, tenant)).id, key_id
        )

    key = run_admin(config, action, "key.revoked")
    err.print(f"Revoked {key.id} ({key.prefix}…).")


@app.command("rotate")
def rotate(
    key_id: Annotated[str, typer.Argument(help="key id (key_…)")],
    tenant: TenantOption = DEFAULT_TENANT,
    grace_s: Annotated[float, typer.Option(min=0, help="old key keeps working this long")] = 0,
    config: ConfigOption = None,
) -> None:
    """Issue a successor with the same settings and retire the old key."""

    async def action(admin: TenancyAdmin) -> IssuedKey:
        found = await admin.tenant_named(OPERATOR, tenant)
        return await admin.rotate_key(OPERATOR, found.id, key_id, grace_s)

    _print_secret(run_admin(config, action, "key.rotated"), tenant)
