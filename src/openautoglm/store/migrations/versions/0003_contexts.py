"""Conversation contexts and their turns.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contexts",
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("context_id", sa.String(200), nullable=False),
        sa.Column("title", sa.Text, nullable=True),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("system_prompt", sa.Text, nullable=True),
        sa.Column("max_turns", sa.Integer, nullable=True),
        sa.Column("ttl_s", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("num_turns", sa.Integer, nullable=False),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_contexts"),
        sa.UniqueConstraint("tenant_id", "context_id", name="uq_contexts_tenant_id_context_id"),
    )
    op.create_index(
        "ix_contexts_tenant_id_created_at", "contexts", ["tenant_id", "created_at", "context_id"]
    )
    op.create_index("ix_contexts_expires_at", "contexts", ["expires_at"])
    op.create_table(
        "context_turns",
        sa.Column("context_key", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("num_tokens", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("context_key", "seq", name="pk_context_turns"),
        sa.ForeignKeyConstraint(
            ["context_key"],
            ["contexts.key"],
            name="fk_context_turns_context_key_contexts",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("context_turns")
    op.drop_index("ix_contexts_expires_at", table_name="contexts")
    op.drop_index("ix_contexts_tenant_id_created_at", table_name="contexts")
    op.drop_table("contexts")
