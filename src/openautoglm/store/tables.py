"""The relational schema. Alembic migrations under ``store/migrations`` create exactly this."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("limits", Text, nullable=True),
    Column("disabled_at", DateTime(timezone=True), nullable=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(64), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("role", String(32), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("allowed_models", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("allowed_regions", Text, nullable=True),
    Column("limits", Text, nullable=True),
    Column("created_by", String(64), nullable=True),
    Index("ix_api_keys_tenant_id", "tenant_id"),
)

# Conversation contexts (migration 0003). ``key`` is a surrogate, so a context deleted and created
# again under the same (tenant_id, context_id) can never see the old one's turns.
contexts = Table(
    "contexts",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("context_id", String(200), nullable=False),
    Column("title", Text, nullable=True),
    Column("labels", Text, nullable=False),  # JSON object, keys sorted
    Column("system_prompt", Text, nullable=True),
    Column("max_turns", Integer, nullable=True),
    Column("ttl_s", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("num_turns", Integer, nullable=False),
    Column("last_seq", Integer, nullable=False),  # highest seq ever given; the append counter
    UniqueConstraint("tenant_id", "context_id", name="uq_contexts_tenant_id_context_id"),
    Index("ix_contexts_tenant_id_created_at", "tenant_id", "created_at", "context_id"),
    Index("ix_contexts_expires_at", "expires_at"),
)

context_turns = Table(
    "context_turns",
    metadata,
    Column(
        "context_key",
        String(32),
        ForeignKey("contexts.key", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True),  # (context_key, seq): unique, and the read order
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("num_tokens", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("request_id", String(64), nullable=True),
)
