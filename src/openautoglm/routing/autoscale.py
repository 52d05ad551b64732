"""Scaling local instances from the scheduler's signal.

For a model with ``scheduler.autoscale: true`` the engine itself acts on ``desired_replicas``:
one step at a time, it starts another copy of the model's first instance (``<name>-auto-N``)
while the signal is above the number of instances and ``max_replicas`` allows, and drains and
closes the newest copy it started while the signal is below (never an instance from the
configuration, never below ``min_replicas``). Other models only publish the signal, for an
external autoscaler (a Kubernetes HPA, an operator starting vLLM instances).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from openautoglm.backends.factory import build_backend
from openautoglm.routing.catalog import Instance, ModelCatalog, ServedModel

logger = logging.getLogger(__name__)
AUTO_MARK = "-auto-"

Drainer = Callable[[Instance], None]


async def autoscale_once(catalog: ModelCatalog, drain: Drainer) -> dict[str, int]:
    """One step for every autoscaled model; the change in instances per model."""
    changes: dict[str, int] = {}
    for model in catalog:
        if not model.resilience.autoscale:
            continue
        step = await _step(model, drain)
        if step:
            changes[model.name] = step
    return changes


async def _step(model: ServedModel, drain: Drainer) -> int:
    desired = model.desired_replicas()
    current = len(model.instances)
    if desired > current and current < model.resilience.max_replicas:
        template = model.instances[0]
        serial = 1 + max((_serial(i.name) for i in model.instances), default=0)
        config = template.config.model_copy(update={"name": f"{template.name}{AUTO_MARK}{serial}"})
        instance = Instance(
            model.name, config.name or "", build_backend(config, model.name), config
        )
        await instance.backend.start()
        model.add(instance)
        logger.info("model %s: started %s (%d wanted)", model.name, instance.name, desired)
        return 1
    started = [i for i in model.instances if AUTO_MARK in i.name]
    if desired < current and started and current > model.resilience.min_replicas:
        newest = max(started, key=lambda i: _serial(i.name))
        drain(model.remove(newest.name))
        logger.info("model %s: stopping %s (%d wanted)", model.name, newest.name, desired)
        return -1
    return 0


def _serial(name: str) -> int:
    _, mark, serial = name.rpartition(AUTO_MARK)
    return int(serial) if mark and serial.isdigit() else 0


async def run_autoscaler(catalog: ModelCatalog, drain: Drainer, interval_s: float = 5.0) -> None:
    """Step every ``interval_s`` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await autoscale_once(catalog, drain)
        except Exception as exc:  # a failed start must not stop scaling
            logger.warning("autoscaling failed: %s", exc)
