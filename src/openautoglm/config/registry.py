"""Settings of the model registry, its releases and webhooks (the ``registry:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

WebhookEvent = Literal[
    "version.transitioned", "alias.moved", "validation.finished", "release.changed"
]


class WebhookConfig(BaseModel):
    """A receiver of registry and release events: POSTed JSON, HMAC-SHA256 signed, retried."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    url: str = Field(pattern=r"^https?://")
    secret: str = Field(min_length=16, description="HMAC key; use ${ENV_VAR} in the YAML")
    events: list[WebhookEvent] | None = Field(default=None, description="none: every event")
    max_attempts: int = Field(default=8, ge=1, le=50)
    timeout_s: float = Field(default=10.0, gt=0)


class RegistrySettings(BaseModel):
    """The model registry, its validation runs, releases and webhooks."""

    model_config = ConfigDict(extra="forbid")

    webhooks: list[WebhookConfig] = Field(default_factory=list)
    release_tick_s: float = Field(
        default=0.5, gt=0, le=10, description="how often releases are analysed and advanced"
    )
    reload_interval_s: float = Field(
        default=1.0, gt=0, description="poll the store for registry and release changes"
    )

    @model_validator(mode="after")
    def _check_unique_webhook_names(self) -> RegistrySettings:
        names = [hook.name for hook in self.webhooks]
        if len(names) != len(set(names)):
            raise ValueError("webhook names must be unique")
        return self
