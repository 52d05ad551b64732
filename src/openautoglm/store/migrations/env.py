"""Alembic environment: runs on the connection handed in by ``store.database.migrate``."""

from __future__ import annotations

from alembic import context

from openautoglm.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through openautoglm.store.database.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
