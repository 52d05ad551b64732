"""Settings of the workflow engine and its triggers (the ``workflows:`` section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CronTrigger(_Strict):
    """Start ``workflow`` on a cron schedule; a slot fires once across restarts and replicas."""

    name: str = Field(min_length=1, max_length=200)
    workflow: str
    cron: str = Field(description="5 fields, e.g. '0 9 * * 1-5'")
    timezone: str = "UTC"
    inputs: dict[str, Any] = Field(default_factory=dict)
    catch_up: Literal["one", "all", "skip"] = Field(
        default="one", description="slots missed while down: fire the latest, all, or none"
    )
    priority: int | None = Field(default=None, ge=0, le=9)


class RedisStreamTrigger(_Strict):
    """Start a run per message of a Redis stream (consumer group; acked after the run is stored)."""

    stream: str
    workflow: str
    group: str = "autoglm"
    consumer: str | None = Field(default=None, description="default: host name and process id")
    url: str | None = Field(default=None, description="default: the top-level redis_url")
    claim_idle_ms: int = Field(default=30_000, ge=1)


class RabbitQueueTrigger(_Strict):
    """Start a run per message of a RabbitMQ queue (manual ack after the run is stored)."""

    queue: str
    workflow: str
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    prefetch: int = Field(default=100, ge=1)


class WebhookTrigger(_Strict):
    """``POST /v1/workflows/hooks/{name}`` with the secret starts ``workflow`` with the body."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    workflow: str
    secret: str = Field(min_length=16, description="use ${ENV_VAR} in the YAML")


class WorkflowSettings(_Strict):
    """The workflow engine: its worker pool, definitions to load, and triggers."""

    enabled: bool = True
    workers: int = Field(default=16, ge=1, le=1024, description="tasks running at once")
    definitions_dir: Path | None = Field(
        default=None, description="YAML workflow files applied on start"
    )
    tenant: str = Field(
        default="default", description="tenant whose policies and audit the llm tasks run under"
    )
    schedules: list[CronTrigger] = Field(default_factory=list)
    redis_streams: list[RedisStreamTrigger] = Field(default_factory=list)
    rabbitmq_queues: list[RabbitQueueTrigger] = Field(default_factory=list)
    webhooks: list[WebhookTrigger] = Field(default_factory=list)
