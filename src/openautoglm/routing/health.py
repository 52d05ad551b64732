"""Active health checks: an instance whose breaker is open is probed (``backend.health()``)
every ``health_check_interval_s``; when it answers, its breaker lets the next real call through
as the probe (half-open), and that call's outcome closes or reopens it."""

from __future__ import annotations

import asyncio
import logging

from openautoglm.routing.breaker import BreakerState
from openautoglm.routing.catalog import Instance, ModelCatalog

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 2.0


async def probe(instance: Instance) -> bool:
    """Whether the instance's backend answers its health check in time (errors: no)."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            return await instance.backend.health()
    except Exception as exc:
        logger.debug("health probe of %s/%s failed: %s", instance.model, instance.name, exc)
        return False


async def probe_open_instances(catalog: ModelCatalog) -> int:
    """Probe every instance whose breaker is open; the number that answered."""
    recovered = 0
    for model in catalog:
        for instance in model.instances:
            if instance.breaker.state is BreakerState.OPEN and await probe(instance):
                instance.breaker.probe_passed()
                recovered += 1
    return recovered


async def watch_health(catalog: ModelCatalog) -> None:
    """Probe open instances until cancelled, at the shortest configured interval."""
    interval = min((model.resilience.health_check_interval_s for model in catalog), default=5.0)
    while True:
        await asyncio.sleep(interval)
        recovered = await probe_open_instances(catalog)
        if recovered:
            logger.info("%d instance(s) answered their health check; probing them", recovered)
