"""Versioned policy documents and key suspensions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", sa.Text, nullable=True),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("scope", "version", name="pk_policy_versions"),
    )
    op.create_table(
        "key_suspensions",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("suspended_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_key_suspensions"),
    )
    op.create_index("ix_key_suspensions_suspended_until", "key_suspensions", ["suspended_until"])


def downgrade() -> None:
    op.drop_index("ix_key_suspensions_suspended_until", table_name="key_suspensions")
    op.drop_table("key_suspensions")
    op.drop_table("policy_versions")
