"""Migrations: applied on open and idempotent, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from tests.support.databases import database_url

from openautoglm.store.database import alembic_config, create_engine, migrate, open_database


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_open_applies_migrations_once(kind: str, tmp_path: Path) -> None:
    async with database_url(kind, tmp_path) as url:
        engine = await open_database(url)
        try:
            await migrate(engine)  # a second run is a no-op
            async with engine.connect() as connection:
                tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
                version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            assert {"tenants", "api_keys", "alembic_version"} <= tables
            assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
        finally:
            await engine.dispose()


async def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await connection.scalar(text("PRAGMA foreign_keys")) == 1
    finally:
        await engine.dispose()


async def test_replicas_migrating_at_once_on_postgresql_do_not_collide(tmp_path: Path) -> None:
    async with database_url("postgresql", tmp_path) as url:
        engines = [create_engine(url) for _ in range(3)]
        try:
            await asyncio.gather(*(migrate(engine) for engine in engines))
            async with engines[0].connect() as connection:
                assert await connection.scalar(text("SELECT count(*) FROM alembic_version")) == 1
        finally:
            for engine in engines:
                await engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_migrated_schema_is_exactly_the_tables_module(kind: str, tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from openautoglm.store.tables import metadata

    async with database_url(kind, tmp_path) as url:
        engine = await open_database(url)
        try:
            async with engine.connect() as connection:
                differences = await connection.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
                )
        finally:
            await engine.dispose()
    assert differences == []
