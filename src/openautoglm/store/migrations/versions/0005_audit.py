"""The tamper-evident audit log: chained events, their policy rules, signed checkpoints.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", SEQ, nullable=False, autoincrement=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
    )
    for name, columns in (
        ("ix_audit_events_tenant_id_seq", ["tenant_id", "seq"]),
        ("ix_audit_events_tenant_id_occurred_at", ["tenant_id", "occurred_at", "seq"]),
        ("ix_audit_events_occurred_at", ["occurred_at", "seq"]),
        ("ix_audit_events_key_id_seq", ["key_id", "seq"]),
        ("ix_audit_events_model_seq", ["model", "seq"]),
        ("ix_audit_events_status_seq", ["status", "seq"]),
        ("ix_audit_events_kind_seq", ["kind", "seq"]),
    ):
        op.create_index(name, "audit_events", columns)
    op.create_table(
        "audit_event_rules",
        sa.Column("seq", SEQ, nullable=False),
        sa.Column("rule_id", sa.String(200), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("seq", "rule_id", name="pk_audit_event_rules"),
    )
    op.create_index("ix_audit_event_rules_rule_id_seq", "audit_event_rules", ["rule_id", "seq"])
    op.create_index(
        "ix_audit_event_rules_tenant_id_rule_id",
        "audit_event_rules",
        ["tenant_id", "rule_id", "seq"],
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("seq", SEQ, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_fingerprint", sa.String(80), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_checkpoints"),
    )
    op.create_index("ix_audit_checkpoints_seq", "audit_checkpoints", ["seq"])


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_event_rules")
    op.drop_table("audit_events")
