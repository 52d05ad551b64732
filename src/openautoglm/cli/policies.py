"""``autoglm policies``: apply, list, show, test and withdraw policy documents.

Commands act on the store directly (as the operator); running servers pick changes up within
``policy.reload_interval_s``. An invalid document is refused whole with its line and reason
(exit status 2) and nothing is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import typer
from rich.table import Table

from openautoglm.cli.common import ConfigOption, err, out, settings_or_exit
from openautoglm.cli.session import OPERATOR, admin_session, audit_cli_action
from openautoglm.config.settings import Settings
from openautoglm.core.clock import SystemClock
from openautoglm.core.errors import OpenAutoGLMError
from openautoglm.policy.engine import EffectivePolicy, decisions_of
from openautoglm.policy.ports import GLOBAL_SCOPE, PolicyVersion
from openautoglm.policy.service import InvalidPolicy, PolicyService, validate
from openautoglm.store.database import open_database
from openautoglm.store.policy_sql import SqlPolicyStore
from openautoglm.tenancy.admin import TenancyAdmin

app = typer.Typer(help="Apply, list, test and withdraw policies.", no_args_is_help=True)
T = TypeVar("T")
TenantOption = Annotated[
    str | None, typer.Option(help="tenant name or id (default: the global policy)")
]
FileArgument = Annotated[
    Path, typer.Argument(help="policy YAML file", exists=True, dir_okay=False, readable=True)
]


@asynccontextmanager
async def _policy_session(settings: Settings) -> AsyncIterator[PolicyService]:
    engine = await open_database(settings.resolved_database_url)
    try:
        service = PolicyService(
            SqlPolicyStore(engine), SystemClock(), settings.policy.libraries_dir
        )
        await service.refresh()
        yield service
    finally:
        await engine.dispose()


def _run(
    config: Path | None,
    tenant: str | None,
    action: Callable[[PolicyService, str], Awaitable[T]],
    audit: str | None = None,
) -> T:
    settings = settings_or_exit(config)

    async def main() -> T:
        scope = GLOBAL_SCOPE if tenant is None else await _tenant_id(settings, tenant)
        async with _policy_session(settings) as service:
            result = await action(service, scope)
        if audit is not None:
            await audit_cli_action(settings, audit, result)
        return result

    try:
        return asyncio.run(main())
    except InvalidPolicy as exc:
        err.print(f"[red]policy refused:[/red] {exc.message.removeprefix('policy refused: ')}")
        raise typer.Exit(2) from exc
    except OpenAutoGLMError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc


async def _tenant_id(settings: Settings, tenant: str) -> str:
    async with admin_session(settings) as admin:
        return await _resolve(admin, tenant)


async def _resolve(admin: TenancyAdmin, tenant: str) -> str:
    try:
        return (await admin.tenant_named(OPERATOR, tenant)).id
    except OpenAutoGLMError:
        return (await admin.get_tenant(OPERATOR, tenant)).id


@app.command("apply")
def apply(
    file: FileArgument,
    tenant: TenantOption = None,
    comment: Annotated[str | None, typer.Option(help="why this change")] = None,
    config: ConfigOption = None,
) -> None:
    """Validate FILE and store it as the next version of the global or a tenant's policy."""
    text = file.read_text(encoding="utf-8")

    async def action(service: PolicyService, scope: str) -> PolicyVersion:
        return await service.apply(scope, text, OPERATOR.key_id, comment)

    version = _run(config, tenant, action, "policy.applied")
    err.print(f"Applied policy '{version.scope}' version {version.version} ({version.digest}).")
    print(version.version)


@app.command("list")
def list_policies(config: ConfigOption = None) -> None:
    """The policy in force for every scope."""

    async def action(service: PolicyService, _scope: str) -> list[PolicyVersion]:
        heads = await service.heads()
        return [v for s in sorted(heads) if (v := await service.current(s)) is not None]

    table = Table("scope", "version", "applied", "by", "digest", "comment")
    for version in _run(config, None, action):
        table.add_row(
            version.scope,
            str(version.version),
            version.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            version.created_by or "",
            (version.digest or "")[:12],
            version.comment or "",
        )
    out.print(table)


@app.command("show")
def show(
    tenant: TenantOption = None,
    version: Annotated[int | None, typer.Option(help="an earlier version")] = None,
    config: ConfigOption = None,
) -> None:
    """Print the document in force (or an earlier version)."""

    async def action(service: PolicyService, scope: str) -> PolicyVersion | None:
        if version is not None:
            return await service.version(scope, version)
        return await service.current(scope)

    found = _run(config, tenant, action)
    if found is None or found.document is None:
        err.print("[red]error:[/red] no such policy version")
        raise typer.Exit(1)
    print(found.document, end="" if found.document.endswith("\n") else "\n")


@app.command("withdraw")
def withdraw(tenant: TenantOption = None, config: ConfigOption = None) -> None:
    """End the global or a tenant's policy (kept in the history)."""

    async def action(service: PolicyService, scope: str) -> PolicyVersion:
        return await service.withdraw(scope, OPERATOR.key_id)

    version = _run(config, tenant, action, "policy.withdrawn")
    err.print(f"Withdrew policy '{version.scope}' (version {version.version}).")


@app.command("test")
def test(
    file: Annotated[
        Path | None, typer.Argument(help="draft policy (default: the rules in force)")
    ] = None,
    text: Annotated[str | None, typer.Option(help="text to test")] = None,
    text_file: Annotated[Path | None, typer.Option(help="read the text from a file")] = None,
    stage: Annotated[str, typer.Option(help="input or output")] = "input",
    model: Annotated[str, typer.Option(help="the model the text goes to")] = "*",
    tenant: TenantOption = None,
    config: ConfigOption = None,
) -> None:
    """Show what a policy does to a text: masked result, decisions, blocking rule (exit 3)."""
    if (text is None) == (text_file is None):
        err.print("[red]error:[/red] give exactly one of --text or --text-file")
        raise typer.Exit(2)
    sample = text if text is not None else Path(str(text_file)).read_text(encoding="utf-8")
    where: Literal["input", "output"] = "output" if stage == "output" else "input"

    async def action(service: PolicyService, scope: str) -> EffectivePolicy:
        if file is not None:
            compiled = validate(file.read_text(encoding="utf-8"), service.libraries_dir)
            return EffectivePolicy([compiled], {"draft": 0})
        return service.for_tenant(scope) if scope != GLOBAL_SCOPE else service.for_tenant("")

    policy = _run(config, tenant, action)
    guard = policy.guard(where, model)
    if guard is None:
        err.print("No text rule applies.")
        print(sample)
        return
    result = guard.apply(sample)
    table = Table("rule", "action", "category")
    for decision in decisions_of(result.spans, where):
        table.add_row(decision.rule, decision.action, decision.category or "")
    err.print(table)
    print(result.text)
    if result.blocked is not None:
        err.print(f"[red]blocked[/red] by rule '{result.blocked.rule_id}'")
        raise typer.Exit(3)
