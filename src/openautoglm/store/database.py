"""Opening the database: async engine, SQLite pragmas, and migrations on start.

Invariant: after :func:`open_database` returns, the schema is at the newest Alembic revision.
SQLite runs in WAL mode with ``synchronous=NORMAL`` and foreign keys on; a committed transaction
survives ``kill -9`` of the process.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


P = ParamSpec("P")
T = TypeVar("T")


def shielded(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run a store call to its end even when the calling request is cancelled.

    A request is cancelled when its client disconnects. Cancelling a task in the middle of a
    database call can leave the connection checked out mid-transaction — with SQLite, holding
    the write lock until the process exits (seen under load). So the call runs as its own task:
    the caller stops waiting, the transaction still commits or rolls back and frees its connection.
    """

    @functools.wraps(method)
    async def run_to_the_end(*args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(method(*args, **kwargs))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    return run_to_the_end


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Nobody may be waiting any more; fetch the outcome so asyncio does not report it as lost.
    if not task.cancelled():
        task.exception()


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def writer_lock(engine: AsyncEngine) -> asyncio.Lock | None:
    """This process's SQLite writer lock for ``engine`` (None on other databases)."""
    if engine.dialect.name != "sqlite":
        return None
    gate = _SQLITE_WRITERS.get(engine.sync_engine)
    if gate is None:
        gate = _SQLITE_WRITERS[engine.sync_engine] = asyncio.Lock()
    return gate


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that writes. On SQLite, this process's writers take turns.

    SQLite has one writer at a time; many concurrent writers otherwise spin on ``busy_timeout``
    and, under load (64 clients storing context turns), some gave up with "database is locked".
    Queueing them in-process first keeps the file lock short and the wait fair. (Several
    processes on one SQLite file still meet at the busy timeout; clusters use PostgreSQL.)
    """
    gate = writer_lock(engine)
    if gate is None:
        async with engine.begin() as connection:
            yield connection
        return
    async with gate, engine.begin() as connection:
        yield connection


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine for ``database_url``; creates the SQLite file's directory if needed."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Every aiosqlite connection is a thread; a few keep GIL contention low (WAL: 1 writer).
        engine = create_async_engine(url, pool_size=4, max_overflow=4)
        event.listen(engine.sync_engine, "connect", set_sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config() -> Config:
    """Alembic configuration pointing at the package's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


_MIGRATION_LOCK_ID = 0x4155544F474C4D  # "AUTOGLM": replicas starting together migrate one at a time


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` in one transaction (PostgreSQL: DDL is transactional)."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)


async def open_database(database_url: str) -> AsyncEngine:
    """Create the engine and bring the schema up to date."""
    engine = create_engine(database_url)
    await migrate(engine)
    return engine
