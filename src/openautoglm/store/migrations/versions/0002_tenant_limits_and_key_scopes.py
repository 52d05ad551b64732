"""Tenant limits and state; per-key regions and limits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("limits", sa.Text, nullable=True))
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("allowed_regions", sa.Text, nullable=True))
        batch.add_column(sa.Column("limits", sa.Text, nullable=True))
        batch.add_column(sa.Column("created_by", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("created_by")
        batch.drop_column("limits")
        batch.drop_column("allowed_regions")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("disabled_at")
        batch.drop_column("limits")
