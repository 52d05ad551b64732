"""Model registry, validation runs, releases, the webhook outbox, and key permissions.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("permissions", sa.Text, nullable=True))
    op.create_table(
        "registered_models",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("gates", sa.Text, nullable=False),
        sa.Column("thresholds", sa.Text, nullable=False),
        _at("created_at"),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_registered_models"),
    )
    op.create_table(
        "model_versions",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("lineage", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("submitted_by", sa.String(64), nullable=True),
        _at("created_at"),
        _at("updated_at"),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("model", "version", name="pk_model_versions"),
        sa.ForeignKeyConstraint(
            ["model"],
            ["registered_models.name"],
            ondelete="CASCADE",
            name="fk_model_versions_model_registered_models",
        ),
    )
    op.create_table(
        "model_aliases",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        _at("updated_at"),
        sa.Column("updated_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("model", "alias", name="pk_model_aliases"),
        sa.ForeignKeyConstraint(
            ["model"],
            ["registered_models.name"],
            ondelete="CASCADE",
            name="fk_model_aliases_model_registered_models",
        ),
    )
    op.create_table(
        "version_transitions",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=False),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        _at("at"),
        sa.PrimaryKeyConstraint("id", name="pk_version_transitions"),
    )
    op.create_index(
        "ix_version_transitions_model_version", "version_transitions", ["model", "version", "id"]
    )
    op.create_table(
        "validation_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dataset_digest", sa.String(64), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("metrics", sa.Text, nullable=True),
        sa.Column("gates", sa.Text, nullable=False),
        sa.Column("gate_results", sa.Text, nullable=True),
        sa.Column("results", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_by", sa.String(64), nullable=True),
        _at("created_at"),
        _at("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_validation_runs"),
    )
    op.create_index(
        "ix_validation_runs_model_version", "validation_runs", ["model", "version", "created_at"]
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stable_version", sa.String(100), nullable=False),
        sa.Column("candidate_version", sa.String(100), nullable=False),
        sa.Column("steps", sa.Text, nullable=False),
        sa.Column("interval_s", sa.Integer, nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("shadow", sa.Integer, nullable=False),
        sa.Column("thresholds", sa.Text, nullable=False),
        sa.Column("started_by", sa.String(64), nullable=True),
        _at("started_at"),
        _at("step_started_at"),
        _at("finished_at", nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_releases"),
    )
    op.create_index("ix_releases_model_started_at", "releases", ["model", "started_at"])
    op.create_index("ix_releases_state", "releases", ["state"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("webhook", sa.String(200), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        _at("next_attempt_at", nullable=True),
        _at("delivered_at", nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        _at("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index(
        "ix_webhook_deliveries_next_attempt_at", "webhook_deliveries", ["next_attempt_at"]
    )


def downgrade() -> None:
    for table in (
        "webhook_deliveries",
        "releases",
        "validation_runs",
        "version_transitions",
        "model_aliases",
        "model_versions",
        "registered_models",
    ):
        op.drop_table(table)
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("permissions")
