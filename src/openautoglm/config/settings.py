"""Settings of an ``autoglm`` process.

Sources, weakest first: defaults, the YAML file (``--config`` or ``AUTOGLM_CONFIG``), then
``AUTOGLM_*`` environment variables (nested keys with ``__``, e.g. ``AUTOGLM_SERVER__PORT``).
``${VAR}`` and ``${VAR:-default}`` in YAML strings are read from the environment; an unset
variable without a default is an error that names it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from openautoglm.config.registry import RegistrySettings
from openautoglm.config.workflows import WorkflowSettings

BackendKind = Literal["echo", "openai", "llamacpp", "transformers", "vllm", "encoder"]
DType = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["none", "int8_weight_only"]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


class InstanceConfig(BaseModel):
    """Settings of one model instance (replica). Unknown keys are refused to catch typos."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    backend: BackendKind | None = None
    region: str | None = None
    weight: float = Field(default=1.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)
    # openai: any OpenAI-compatible upstream
    base_url: str | None = None
    api_key: str | None = None
    upstream_model: str | None = Field(default=None, description="model name sent upstream")
    timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    # llamacpp / transformers: local weights
    model_path: str | None = None
    gguf_file: str | None = None
    n_parallel: int = Field(default=4, ge=1)
    n_ctx: int = Field(default=4096, ge=256)
    n_threads: int | None = Field(default=None, ge=1)
    embeddings: bool = False
    device: str = "cpu"
    # transformers: the continuous-batching engine (see engine/)
    batching: bool = Field(
        default=True, description="continuous batching engine (false: one generation at a time)"
    )
    max_num_seqs: int = Field(default=32, ge=1, description="sequences decoded per step")
    max_batch_tokens: int = Field(default=512, ge=1, description="tokens computed per step")
    kv_cache_tokens: int = Field(default=16384, ge=16, description="KV cache size, in tokens")
    block_size: int = Field(default=16, ge=1, le=1024, description="KV cache block, in tokens")
    prefix_caching: bool = True
    dtype: DType = "float32"
    quantization: Quantization = "none"
    compile: bool = Field(default=False, description="torch.compile the model runner")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    # vllm: a supervised `vllm serve` process (tensor/pipeline_parallel_size above apply)
    launch_command: list[str] | None = Field(
        default=None, description="executable and leading arguments (default: ['vllm', 'serve'])"
    )
    extra_args: list[str] = Field(default_factory=list)
    port: int | None = Field(default=None, ge=1, le=65535, description="default: a free port")
    startup_timeout_s: float = Field(default=300.0, gt=0)
    restart_backoff_s: float = Field(default=1.0, gt=0)
    max_restart_backoff_s: float = Field(default=60.0, gt=0)
    log_file: str | None = None
    # encoder: a sentence-embedding model, requests batched together
    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_ms: float = Field(default=2.0, ge=0)
    normalize: bool = True
    # echo: deterministic test backend
    reply: str | None = None
    latency_ms: float = Field(default=0.0, ge=0)
    tokens_per_s: float | None = Field(default=None, gt=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    seed: int = 0
    # capabilities that cannot be discovered
    vision: bool | None = None
    context_length: int | None = Field(default=None, ge=1)


BalancerKind = Literal["round_robin", "least_outstanding", "p2c_ewma", "consistent_hash"]
FailureClass = Literal["unavailable", "upstream", "timeout", "backend", "rate_limited"]


_FALLBACK_ON: tuple[FailureClass, ...] = ("unavailable", "upstream", "timeout", "backend")


class BreakerConfig(BaseModel):
    """Per-instance circuit breaker (see ``routing/breaker.py``)."""

    model_config = ConfigDict(extra="forbid")

    consecutive_failures: int = Field(default=5, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    min_calls: int = Field(default=20, ge=1)
    window_s: float = Field(default=10.0, gt=0)
    cooldown_s: float = Field(default=10.0, gt=0)


class RetryConfig(BaseModel):
    """Retries on another instance, only before the first byte reached the client."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=10, description="tries in all, per model")
    budget_ratio: float = Field(
        default=0.2, ge=0, le=1, description="retries at most this share of requests"
    )
    min_per_s: float = Field(default=10.0, ge=0, description="retries always allowed per second")


class SchedulerConfig(BaseModel):
    """The model's request queue (priority, earliest deadline, aging, tenant fair share)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_queue: int = Field(default=1000, ge=0, description="queued requests before 503")
    aging_s: float | None = Field(
        default=5.0, gt=0, description="a waiting request gains one priority class this often"
    )
    tenant_weights: dict[str, float] = Field(
        default_factory=dict, description="fair-share weights by tenant id (default 1)"
    )
    default_priority: int = Field(default=5, ge=0, le=9)
    target_wait_s: float = Field(
        default=0.5, gt=0, description="queue wait the scaling signal aims for"
    )
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=16, ge=1)
    autoscale: bool = Field(
        default=False,
        description="start/stop copies of the first instance (local backends) from the signal",
    )


class ModelConfig(InstanceConfig):
    """A served model name: its defaults plus, optionally, several instances that override them."""

    name: str = Field(min_length=1, max_length=200)
    backend: BackendKind
    instances: list[InstanceConfig] = Field(default_factory=list)
    balancer: BalancerKind = "round_robin"
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    health_check_interval_s: float = Field(
        default=5.0, gt=0, description="how often an instance with an open breaker is probed"
    )
    fallbacks: list[str] = Field(
        default_factory=list, description="models tried in order when this one fails"
    )
    fallback_on: list[FailureClass] = Field(default_factory=lambda: list(_FALLBACK_ON))

    @model_validator(mode="after")
    def _check_backend_settings(self) -> ModelConfig:
        for instance in self.resolved_instances():
            if instance.backend == "openai" and not instance.base_url:
                raise ValueError(f"model '{self.name}': backend 'openai' needs base_url")
        return self

    def resolved_instances(self) -> list[InstanceConfig]:
        """Each instance with the model's keys filled in where the instance leaves them unset."""
        defaults = self.model_dump(exclude=_MODEL_ONLY)
        if not self.instances:
            return [InstanceConfig(**{**defaults, "name": "default"})]
        resolved = []
        for index, instance in enumerate(self.instances):
            own = instance.model_dump(exclude_unset=True)
            own.setdefault("name", f"i{index}")
            resolved.append(InstanceConfig(**{**defaults, **own}))
        return resolved


_MODEL_ONLY = {
    "instances",
    "name",
    "balancer",
    "scheduler",
    "breaker",
    "retries",
    "health_check_interval_s",
    "fallbacks",
    "fallback_on",
}


class ServerSettings(BaseModel):
    """The HTTP listener."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    access_log: bool = False
    gc_tuning: bool = Field(
        default=True, description="freeze start-up objects and raise GC thresholds (throughput)"
    )
    cors_origins: list[str] = Field(default_factory=list)


class ContextsSettings(BaseModel):
    """Conversation contexts (``context_id``)."""

    model_config = ConfigDict(extra="forbid")

    create_on_first_use: bool = Field(
        default=True, description="a call naming an unknown context creates it (else 404)"
    )
    default_ttl_s: int | None = Field(default=7 * 24 * 3600, ge=1, description="idle lifetime")
    default_max_turns: int | None = Field(default=200, ge=2)
    summary_model: str | None = Field(
        default=None,
        description="model that summarises turns dropped from the window (none: just drop them)",
    )


class AuditSettings(BaseModel):
    """The tamper-evident audit log (one event per request and per admin action)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    flush_interval_s: float = Field(
        default=0.2, gt=0, le=60, description="longest an answered request's event waits unwritten"
    )
    batch_size: int = Field(default=500, ge=1, le=10_000, description="events per write")
    max_pending: int = Field(
        default=100_000, ge=100, description="events held in memory while the store is down"
    )
    checkpoint_interval_s: float = Field(
        default=60.0, gt=0, description="how often the chain head is signed"
    )
    retention_days: int = Field(default=180, ge=1, description="CSL Art. 21: at least 180 days")
    signing_key_file: Path | None = Field(
        default=None, description="Ed25519 private key (PEM); default <data_dir>/audit_signing.key"
    )


class PolicySettings(BaseModel):
    """The policy engine."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    reload_interval_s: float = Field(
        default=2.0, gt=0, description="poll for policy changes (Redis announces them at once)"
    )
    libraries_dir: Path | None = Field(
        default=None, description="extra folder of keyword library files a policy may name"
    )


class Settings(BaseSettings):
    """Everything an ``autoglm`` process reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="AUTOGLM_", env_nested_delimiter="__", extra="forbid"
    )

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(default_factory=lambda: Path("~/.openautoglm").expanduser())
    database_url: str | None = None
    redis_url: str | None = None
    server: ServerSettings = Field(default_factory=ServerSettings)
    contexts: ContextsSettings = Field(default_factory=ContextsSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    workflows: WorkflowSettings = Field(default_factory=WorkflowSettings)
    models: list[ModelConfig] = Field(default_factory=list)
    default_model: str | None = Field(
        default=None, description="model for requests that name none (default: the first)"
    )
    demo_models: bool = Field(
        default=True, description="serve smollm2-135m and echo when no models are configured"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _check_unique_model_names(self) -> Settings:
        names = [model.name for model in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The configured database, or SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.expanduser() / 'autoglm.db'}"


def expand_env(value: Any, environ: dict[str, str], where: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML document."""
    if isinstance(value, dict):
        return {key: expand_env(item, environ, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, environ, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where.lstrip('.')}: environment variable {name} is not set")

    return _VAR.sub(substitute, value)


def read_yaml(path: Path, environ: dict[str, str]) -> dict[str, Any]:
    """Parse a config file into a dict, expanding environment references."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    expanded: dict[str, Any] = expand_env(document, environ)
    return expanded


def load_settings(
    config_path: Path | str | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read settings from the YAML file (if any) and the environment, then apply ``overrides``.

    Raises ``ConfigError`` with a readable message on any problem.
    """
    env = dict(os.environ if environ is None else environ)
    path = config_path or env.get("AUTOGLM_CONFIG")
    document = read_yaml(Path(path), env) if path else {}
    document.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Settings(**document)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, path)) from exc


def _describe_validation_error(exc: ValidationError, path: Path | str | None) -> str:
    source = f" in {path}" if path else ""
    lines = [f"invalid configuration{source}:"]
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {location}: {error['msg']}")
    return "\n".join(lines)
