"""Durable workflows: definitions, runs, task runs and cron schedule state.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "workflow_definitions",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        _at("created_at", nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("name", "version", name="pk_workflow_definitions"),
    )
    op.create_table(
        "workflow_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("workflow_version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("priority", sa.Integer, nullable=False),
        _at("deadline"),
        sa.Column("trigger", sa.String(200), nullable=False),
        sa.Column("dedupe_key", sa.String(300), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("tenant_id", sa.String(64), nullable=True),
        _at("created_at", nullable=False),
        _at("started_at"),
        _at("finished_at"),
        sa.PrimaryKeyConstraint("id", name="pk_workflow_runs"),
        sa.UniqueConstraint("dedupe_key", name="uq_workflow_runs_dedupe_key"),
    )
    op.create_index("ix_workflow_runs_state", "workflow_runs", ["state"])
    op.create_index(
        "ix_workflow_runs_workflow_created_at", "workflow_runs", ["workflow", "created_at"]
    )
    op.create_table(
        "workflow_tasks",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("error_class", sa.String(32), nullable=True),
        _at("started_at"),
        _at("finished_at"),
        _at("next_attempt_at"),
        sa.Column("logs", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("run_id", "task_id", name="pk_workflow_tasks"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_runs.id"],
            ondelete="CASCADE",
            name="fk_workflow_tasks_run_id_workflow_runs",
        ),
    )
    op.create_table(
        "workflow_schedules",
        sa.Column("name", sa.String(200), nullable=False),
        _at("last_fire_at", nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_workflow_schedules"),
    )


def downgrade() -> None:
    for table in ("workflow_schedules", "workflow_tasks", "workflow_runs", "workflow_definitions"):
        op.drop_table(table)
