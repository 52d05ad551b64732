"""Wiring of the model registry, validation runs, releases and webhooks into a running engine.

Built last by ``build_services``: it needs the gateway (validation items go through it) and
the catalog (serving versions are added to it). On start it brings the champions and active
releases up, then runs the release loop and the webhook dispatcher in the background.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from openautoglm.audit.log import AuditLog
from openautoglm.config.registry import RegistrySettings
from openautoglm.core.clock import Clock
from openautoglm.gateway.evaluation import GatewayAsker, GatewayJudge
from openautoglm.gateway.pipeline import Gateway
from openautoglm.registry.service import RegistryService
from openautoglm.registry.validating import Validations
from openautoglm.registry.webhooks import WebhookDispatcher
from openautoglm.releases.controller import ReleaseController
from openautoglm.routing.catalog import ModelCatalog
from openautoglm.routing.release_loop import ReleaseRuntime, run_releases
from openautoglm.routing.versions import Drainer, VersionServing
from openautoglm.store.registry_sql import SqlRegistryStore
from openautoglm.store.releases_sql import SqlReleaseStore
from openautoglm.store.webhooks_sql import SqlWebhookOutbox

logger = logging.getLogger(__name__)


@dataclass
class Registry:
    """The registry's parts in a running engine."""

    service: RegistryService
    releases: ReleaseController
    runtime: ReleaseRuntime
    validations: Validations
    webhooks: WebhookDispatcher
    outbox: SqlWebhookOutbox
    background: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.validations.close()
        await self.webhooks.close()


async def build_registry(
    settings: RegistrySettings,
    engine: AsyncEngine,
    clock: Clock,
    audit: AuditLog | None,
    catalog: ModelCatalog,
    gateway: Gateway,
    drain: Drainer,
) -> Registry:
    """Create the registry's parts, restore serving state, start their loops."""
    versions = gateway.versions
    assert versions is not None, "the gateway routes versions"
    split, traffic = versions.split, versions.traffic
    outbox = SqlWebhookOutbox(engine)
    dispatcher = WebhookDispatcher(outbox, settings.webhooks, clock)
    hooks, wake = settings.webhooks, dispatcher.wake
    service = RegistryService(SqlRegistryStore(engine, hooks, wake), clock, audit)
    controller = ReleaseController(
        SqlReleaseStore(engine, hooks, wake), service, split, traffic, clock
    )
    serving = VersionServing(catalog, service.store, drain, clock)
    runtime = ReleaseRuntime(controller, serving)
    validations = Validations(
        service,
        clock,
        lambda principal, model, version: GatewayAsker(gateway, principal, model, version),
        lambda principal, model: GatewayJudge(gateway, principal, model),
        serving.hold,
    )
    registry = Registry(service, controller, runtime, validations, dispatcher, outbox)
    try:
        await runtime.sync()
    except Exception:  # serve what can be served; the loop keeps trying
        logger.exception("could not bring registry versions up at start")
    registry.background = [
        asyncio.ensure_future(
            run_releases(runtime, settings.release_tick_s, settings.reload_interval_s)
        ),
        asyncio.ensure_future(dispatcher.run()),
    ]
    return registry
