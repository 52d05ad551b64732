"""The relational schema. Alembic migrations under ``store/migrations`` create exactly this."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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
    Column("permissions", Text, nullable=True),  # JSON list (migration 0007), e.g. approve_models
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

# Policy documents (migration 0004). Every apply adds a version; the highest version of a scope
# is in force, and a version with no document withdraws the scope's policy.
policy_versions = Table(
    "policy_versions",
    metadata,
    Column("scope", String(64), primary_key=True),  # "global" or a tenant id
    Column("version", Integer, primary_key=True),
    Column("document", Text, nullable=True),
    Column("digest", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(64), nullable=True),
    Column("comment", Text, nullable=True),
)

# Keys suspended after repeated policy violations (migration 0004).
key_suspensions = Table(
    "key_suspensions",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("suspended_until", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_key_suspensions_suspended_until", "suspended_until"),
)

# Audit log (migration 0005). ``payload`` is the canonical JSON the chain hashes; the other
# columns of ``audit_events`` copy fields of it for indexed filtering, and verification checks
# that they still equal the payload. ``audit_event_rules`` indexes the policy rules per event.
# A seq is a BIGINT, and on SQLite an INTEGER: there ``INTEGER PRIMARY KEY`` is the rowid itself.
_SEQ = BigInteger().with_variant(Integer, "sqlite")
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("endpoint", String(200), nullable=False),
    Column("status", Integer, nullable=False),
    Column("tenant_id", String(64), nullable=True),
    Column("key_id", String(64), nullable=True),
    Column("model", String(200), nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_events_tenant_id_seq", "tenant_id", "seq"),
    Index("ix_audit_events_tenant_id_occurred_at", "tenant_id", "occurred_at", "seq"),
    Index("ix_audit_events_occurred_at", "occurred_at", "seq"),
    Index("ix_audit_events_key_id_seq", "key_id", "seq"),
    Index("ix_audit_events_model_seq", "model", "seq"),
    Index("ix_audit_events_status_seq", "status", "seq"),
    Index("ix_audit_events_kind_seq", "kind", "seq"),
)

audit_event_rules = Table(
    "audit_event_rules",
    metadata,
    Column("seq", _SEQ, primary_key=True),
    Column("rule_id", String(200), primary_key=True),
    Column("tenant_id", String(64), nullable=True),
    Index("ix_audit_event_rules_rule_id_seq", "rule_id", "seq"),
    Index("ix_audit_event_rules_tenant_id_rule_id", "tenant_id", "rule_id", "seq"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("seq", _SEQ, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("key_fingerprint", String(80), nullable=False),
    Column("signature", String(128), nullable=False),
    Index("ix_audit_checkpoints_seq", "seq"),
)

# Instance changes made through the admin API (migration 0006), replayed over the YAML on start
# and by every replica on reload. ``config`` is the instance's JSON; NULL: the instance was removed.
instance_overrides = Table(
    "instance_overrides",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("config", Text, nullable=True),
    Column("revision", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Model registry (migration 0007). A version's ``spec`` is the JSON of the instances that serve
# it; ``parameters``, ``tags``, ``lineage`` and ``gates`` are JSON objects. ``revision`` grows with
# every change of a version's state, so two concurrent transitions cannot both win.
registered_models = Table(
    "registered_models",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("description", Text, nullable=True),
    Column("gates", Text, nullable=False),
    Column("thresholds", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(64), nullable=True),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column(
        "model",
        String(200),
        ForeignKey("registered_models.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("version", String(100), primary_key=True),
    Column("state", String(32), nullable=False),
    Column("spec", Text, nullable=False),
    Column("parameters", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("lineage", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("created_by", String(64), nullable=True),
    Column("submitted_by", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("revision", Integer, nullable=False),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column(
        "model",
        String(200),
        ForeignKey("registered_models.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("alias", String(64), primary_key=True),
    Column("version", String(100), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(64), nullable=True),
)

version_transitions = Table(
    "version_transitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("from_state", String(32), nullable=False),
    Column("to_state", String(32), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("reason", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_version_transitions_model_version", "model", "version", "id"),
)

validation_runs = Table(
    "validation_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("status", String(16), nullable=False),  # running | passed | failed | error
    Column("dataset_digest", String(64), nullable=False),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("metrics", Text, nullable=True),
    Column("gates", Text, nullable=False),
    Column("gate_results", Text, nullable=True),
    Column("results", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_by", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index("ix_validation_runs_model_version", "model", "version", "created_at"),
)

# Releases (migration 0007): one active (running or paused) release per model at a time.
releases = Table(
    "releases",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("stable_version", String(100), nullable=False),
    Column("candidate_version", String(100), nullable=False),
    Column("steps", Text, nullable=False),
    Column("interval_s", Integer, nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("shadow", Integer, nullable=False),
    Column("thresholds", Text, nullable=False),
    Column("started_by", String(64), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("step_started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=True),
    Column("revision", Integer, nullable=False),
    Index("ix_releases_model_started_at", "model", "started_at"),
    Index("ix_releases_state", "state"),
)

# Webhook outbox (migration 0007): a delivery is written in the transaction that made the event,
# then sent (HMAC-signed) and retried until delivered or out of attempts.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("webhook", String(200), nullable=False),
    Column("event", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),  # NULL: done
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_webhook_deliveries_next_attempt_at", "next_attempt_at"),
)

# Workflows (migration 0008). A definition is stored as JSON, one row per version; a run keeps
# the version it started with. ``dedupe_key`` makes triggers idempotent (one run per event).
workflow_definitions = Table(
    "workflow_definitions",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("document", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(64), nullable=True),
)

workflow_runs = Table(
    "workflow_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("inputs", Text, nullable=False),
    Column("outputs", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("priority", Integer, nullable=False),
    Column("deadline", DateTime(timezone=True), nullable=True),
    Column("trigger", String(200), nullable=False),
    Column("dedupe_key", String(300), nullable=True, unique=True),
    Column("created_by", String(64), nullable=True),
    Column("tenant_id", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index("ix_workflow_runs_state", "state"),
    Index("ix_workflow_runs_workflow_created_at", "workflow", "created_at"),
)

workflow_tasks = Table(
    "workflow_tasks",
    metadata,
    Column(
        "run_id",
        String(64),
        ForeignKey("workflow_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("task_id", String(200), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("output", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("error_class", String(32), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("logs", Text, nullable=True),
)

workflow_schedules = Table(
    "workflow_schedules",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("last_fire_at", DateTime(timezone=True), nullable=False),
)
