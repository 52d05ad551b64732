"""``autoglm audit``: verify, export and prune the audit log, straight from the store.

Whoever can run these against the database holds every key to it already, so they see every
tenant. ``verify`` needs the signing key file the server uses (to check checkpoints) and exits
1 when anything is broken; ``prune`` signs the retention checkpoint with that key.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TextIO, TypeVar

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from openautoglm.audit.export import ExportFormat, encode_pages
from openautoglm.audit.log import AuditLog
from openautoglm.audit.model import VerifyReport
from openautoglm.audit.ports import AuditPage, AuditQuery, AuditStoreError
from openautoglm.audit.signing import CheckpointSigner, signing_key_path, verifier_from_file
from openautoglm.audit.verify import verify_log
from openautoglm.cli.common import ConfigOption, err, out, settings_or_exit
from openautoglm.config.settings import Settings
from openautoglm.core.clock import SystemClock
from openautoglm.store.audit_sql import SqlAuditStore
from openautoglm.store.database import open_database
from openautoglm.store.tenancy_sql import SqlTenancyStore

app = typer.Typer(help="Verify, export and prune the audit log.", no_args_is_help=True)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Session:
    settings: Settings
    engine: AsyncEngine
    store: SqlAuditStore


@asynccontextmanager
async def audit_session(settings: Settings) -> AsyncIterator[Session]:
    """The audit store of the configured database, closed on exit."""
    engine = await open_database(settings.resolved_database_url)
    try:
        yield Session(settings, engine, SqlAuditStore(engine))
    finally:
        await engine.dispose()


def _run(config: Path | None, action: Callable[[Session], Awaitable[T]]) -> T:
    settings = settings_or_exit(config)

    async def main() -> T:
        async with audit_session(settings) as session:
            return await action(session)

    try:
        return asyncio.run(main())
    except AuditStoreError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc


def _key_path(settings: Settings) -> Path:
    return signing_key_path(settings.audit.signing_key_file, settings.data_dir.expanduser())


def parse_moment(text: str) -> datetime:
    """An ISO-8601 date or time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO-8601 date or time: {text!r}") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _print_report(report: VerifyReport) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("result", "[green]OK[/green]" if report.ok else "[red]BROKEN[/red]")
    table.add_row("events checked", str(report.checked))
    if report.first_seq is not None:
        table.add_row("stored seqs", f"{report.first_seq}..{report.last_seq or '?'}")
    table.add_row("checkpoints confirmed", str(report.checkpoints))
    if not report.ok:
        table.add_row("first broken seq", str(report.first_broken_seq))
        table.add_row("reason", report.reason or "")
    out.print(table)


@app.command("verify")
def verify(config: ConfigOption = None) -> None:
    """Check the hash chain and the signed checkpoints; exit 1 if anything is broken."""

    async def action(session: Session) -> VerifyReport:
        key_path = _key_path(session.settings)
        verifier = verifier_from_file(key_path)
        if verifier is None:
            err.print(f"[yellow]no audit signing key at {key_path}[/yellow]")
        return await verify_log(session.store, verifier)

    report = _run(config, action)
    _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


FormatOption = Annotated[str, typer.Option("--format", help="jsonl or csv")]


@app.command("export")
def export(
    export_format: FormatOption = "jsonl",
    since: Annotated[str | None, typer.Option(help="from this time on (ISO-8601)")] = None,
    until: Annotated[str | None, typer.Option(help="before this time (ISO-8601)")] = None,
    tenant: Annotated[str | None, typer.Option(help="tenant name or id")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file (default: stdout)", dir_okay=False)
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write events, oldest first, as JSON lines or CSV."""
    if export_format not in ("jsonl", "csv"):
        raise typer.BadParameter("--format must be jsonl or csv")
    chosen: ExportFormat = "csv" if export_format == "csv" else "jsonl"
    first = parse_moment(since) if since else None
    last = parse_moment(until) if until else None

    async def action(session: Session, handle: TextIO) -> int:
        tenant_id = tenant
        if tenant is not None:
            found = await SqlTenancyStore(session.engine).tenant_by_name(tenant)
            tenant_id = found.id if found is not None else tenant
        query = AuditQuery(since=first, until=last, tenant_id=tenant_id)
        return await _write_export(session.store, query, chosen, handle)

    with ExitStack() as stack:
        handle = (
            stack.enter_context(open(output, "w", encoding="utf-8", newline=""))
            if output
            else sys.stdout
        )
        count = _run(config, lambda session: action(session, handle))
    err.print(f"Exported {count} events" + (f" to {output}." if output else "."))


async def _write_export(
    store: SqlAuditStore, query: AuditQuery, export_format: ExportFormat, handle: TextIO
) -> int:
    count = 0

    async def counted() -> AsyncIterator[AuditPage]:
        nonlocal count
        cursor: str | None = None
        while True:
            page = await store.page(query, limit=1000, cursor=cursor, order="asc")
            count += len(page.events)
            progress.update(task, completed=count)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    columns = (SpinnerColumn(), TextColumn("exporting"), TextColumn("{task.completed} events"))
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("export", total=None)
        async for chunk in encode_pages(counted(), export_format):
            handle.write(chunk)
    return count


@app.command("prune")
def prune(
    before: Annotated[str, typer.Option(help="delete events older than this (ISO-8601)")],
    force: Annotated[
        bool, typer.Option(help="allow deleting events younger than audit.retention_days")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Delete old events; a signed checkpoint keeps the rest verifiable."""
    moment = parse_moment(before)

    async def action(session: Session) -> int:
        settings, clock = session.settings, SystemClock()
        keep_from = clock.now() - timedelta(days=settings.audit.retention_days)
        if moment > keep_from and not force:
            err.print(
                f"[red]refused:[/red] {before} is within the retention period "
                f"({settings.audit.retention_days} days); use --force to prune anyway"
            )
            raise typer.Exit(2)
        signer = CheckpointSigner.from_file(_key_path(settings))
        return await AuditLog(session.store, signer, clock).prune(moment)

    deleted = _run(config, action)
    err.print(f"Deleted {deleted} events older than {moment.isoformat()}.")
