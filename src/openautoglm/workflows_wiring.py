"""Wiring of the workflow engine into a running server: store, executor, triggers.

On start: YAML definitions in ``workflows.definitions_dir`` are applied, every unfinished run is
resumed (:meth:`WorkflowService.recover`), then the executor's workers, the cron scheduler and
the broker consumers start. One replica should run workflows (``workflows.enabled``): runs are
not shared between executors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from openautoglm.audit.log import AuditLog
from openautoglm.config.settings import ConfigError
from openautoglm.config.workflows import WorkflowSettings
from openautoglm.core.clock import Clock
from openautoglm.gateway.pipeline import Gateway
from openautoglm.gateway.workflow_llm import GatewayLlm
from openautoglm.observability.workflow_metrics import WorkflowMetrics
from openautoglm.store.workflows_sql import SqlWorkflowStore
from openautoglm.tenancy.model import Principal, Role
from openautoglm.tenancy.ports import TenancyStore
from openautoglm.workflows.definition import load_workflow
from openautoglm.workflows.executor import Executor
from openautoglm.workflows.runners import TaskRunners
from openautoglm.workflows.service import WorkflowService
from openautoglm.workflows.triggers.brokers import RabbitQueueTrigger, RedisStreamTrigger
from openautoglm.workflows.triggers.cron import CronSchedule, CronScheduler

logger = logging.getLogger(__name__)


@dataclass
class Workflows:
    """The workflow engine's parts in a running server."""

    service: WorkflowService
    settings: WorkflowSettings
    runners: TaskRunners
    metrics: WorkflowMetrics
    background: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)

    async def close(self) -> None:
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.service.close()
        for closer in self.closers:
            await closer()
        await self.runners.close()


async def build_workflows(
    settings: WorkflowSettings,
    engine: AsyncEngine,
    clock: Clock,
    gateway: Gateway,
    audit: AuditLog | None,
    tenancy: TenancyStore,
    redis_url: str | None,
    metrics: WorkflowMetrics,
) -> Workflows:
    """Create the engine, apply definitions, resume unfinished runs, start the triggers."""
    tenant = await tenancy.tenant_by_name(settings.tenant)
    tenant_id = tenant.id if tenant is not None else settings.tenant
    principal = Principal(tenant_id=tenant_id, key_id="workflows", role=Role.OPERATOR)
    runners = TaskRunners(GatewayLlm(gateway, principal, audit))
    store = SqlWorkflowStore(engine)
    executor = Executor(store, runners, clock, settings.workers, observe=metrics.task_finished)
    metrics.watch(executor)
    service = WorkflowService(store, executor, clock)
    workflows = Workflows(service, settings, runners, metrics)
    if settings.definitions_dir is not None:
        for path in sorted(settings.definitions_dir.expanduser().glob("*.y*ml")):
            version, spec = await service.apply(
                load_workflow(path.read_text(encoding="utf-8")).as_document(), "config"
            )
            logger.info("workflow %s version %d from %s", spec.name, version, path.name)
    executor.start()
    await service.recover()
    background = workflows.background
    if settings.schedules:
        schedules = [
            CronSchedule(
                name=s.name,
                workflow=s.workflow,
                cron=s.cron,
                inputs=s.inputs,
                timezone=s.timezone,
                catch_up=s.catch_up,
                priority=s.priority,
            )
            for s in settings.schedules
        ]
        scheduler = CronScheduler(schedules, service, store, clock)
        background.append(asyncio.ensure_future(scheduler.run()))
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    for stream in settings.redis_streams:
        url = stream.url or redis_url
        if url is None:
            raise ConfigError(f"workflows.redis_streams '{stream.stream}' needs a url or redis_url")
        redis = Redis.from_url(url)
        workflows.closers.append(redis.aclose)
        trigger = RedisStreamTrigger(
            redis,
            stream.stream,
            stream.group,
            stream.consumer or consumer,
            stream.workflow,
            service,
            claim_idle_ms=stream.claim_idle_ms,
        )
        background.append(asyncio.ensure_future(trigger.run()))
    for queue in settings.rabbitmq_queues:
        rabbit = RabbitQueueTrigger(
            queue.url, queue.queue, queue.workflow, service, prefetch=queue.prefetch
        )
        workflows.closers.append(rabbit.close)
        background.append(asyncio.ensure_future(rabbit.run()))
    return workflows
