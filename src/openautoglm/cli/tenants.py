"""``autoglm tenants``: create, list and change tenants."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from openautoglm.cli.common import ConfigOption, err, out
from openautoglm.cli.keys import run_admin
from openautoglm.cli.session import OPERATOR
from openautoglm.tenancy.admin import TenancyAdmin
from openautoglm.tenancy.model import Tenant

app = typer.Typer(help="Create, list and change tenants.", no_args_is_help=True)


def _limits(
    rpm: int | None, tpm: int | None, daily: int | None, monthly: int | None, concurrent: int | None
) -> dict[str, int]:
    values = {
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "tokens_per_day": daily,
        "tokens_per_month": monthly,
        "max_concurrent": concurrent,
    }
    return {name: value for name, value in values.items() if value is not None}


RPM = Annotated[int | None, typer.Option(help="requests per minute")]
TPM = Annotated[int | None, typer.Option(help="tokens per minute")]
Daily = Annotated[int | None, typer.Option(help="tokens per day")]
Monthly = Annotated[int | None, typer.Option(help="tokens per month")]
Concurrent = Annotated[int | None, typer.Option(help="concurrent requests")]


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="tenant name")],
    rpm: RPM = None,
    tpm: TPM = None,
    daily: Daily = None,
    monthly: Monthly = None,
    concurrent: Concurrent = None,
    config: ConfigOption = None,
) -> None:
    """Create a tenant, optionally with limits."""
    limits = _limits(rpm, tpm, daily, monthly, concurrent) or None

    async def action(admin: TenancyAdmin) -> Tenant:
        return await admin.create_tenant(OPERATOR, name, limits)

    tenant = run_admin(config, action, "tenant.created")
    err.print(f"Created tenant '{tenant.name}' ({tenant.id}).")
    print(tenant.id)


@app.command("list")
def list_tenants(config: ConfigOption = None) -> None:
    """List tenants with their limits and state."""
    table = Table("id", "name", "limits", "state")
    for tenant in run_admin(config, lambda admin: admin.list_tenants(OPERATOR)):
        limits = ", ".join(f"{k}={v}" for k, v in (tenant.limits or {}).items()) or "-"
        table.add_row(
            tenant.id, tenant.name, limits, "disabled" if tenant.is_disabled else "active"
        )
    out.print(table)


@app.command("update")
def update(
    name: Annotated[str, typer.Argument(help="tenant name")],
    rpm: RPM = None,
    tpm: TPM = None,
    daily: Daily = None,
    monthly: Monthly = None,
    concurrent: Concurrent = None,
    disable: Annotated[
        bool | None, typer.Option("--disable/--enable", help="stop or resume serving")
    ] = None,
    clear_limits: Annotated[bool, typer.Option(help="remove all limits")] = False,
    config: ConfigOption = None,
) -> None:
    """Change a tenant's limits, or disable/enable it."""
    limits = _limits(rpm, tpm, daily, monthly, concurrent) or None

    async def action(admin: TenancyAdmin) -> Tenant:
        found = await admin.tenant_named(OPERATOR, name)
        return await admin.update_tenant(
            OPERATOR, found.id, limits=limits, clear_limits=clear_limits, disabled=disable
        )

    tenant = run_admin(config, action, "tenant.updated")
    err.print(f"Updated tenant '{tenant.name}'.")
