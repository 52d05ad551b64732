"""Local autoscaling: copies of the first instance start and stop with the scaling signal."""

from __future__ import annotations

from openautoglm.backends.echo import EchoBackend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.clock import ManualClock
from openautoglm.routing.autoscale import autoscale_once
from openautoglm.routing.catalog import Instance, ModelCatalog, Resilience, ServedModel
from openautoglm.scheduling.scheduler import ModelScheduler


async def test_instances_follow_the_signal_within_bounds() -> None:
    clock = ManualClock()
    config = InstanceConfig(backend="echo", name="base", max_concurrency=2)
    base = Instance("m", "base", EchoBackend(config), config)
    scheduler = ModelScheduler(2, clock)
    model = ServedModel(
        "m",
        [base],
        resilience=Resilience(autoscale=True, min_replicas=1, max_replicas=3),
        clock=clock,
        scheduler=scheduler,
    )
    catalog = ModelCatalog([model], None)
    drained: list[str] = []
    wanted = {"n": 5}
    model.desired_replicas = lambda: wanted["n"]  # type: ignore[method-assign]

    assert await autoscale_once(catalog, lambda i: drained.append(i.name)) == {"m": 1}
    assert await autoscale_once(catalog, lambda i: drained.append(i.name)) == {"m": 1}
    assert await autoscale_once(catalog, lambda i: drained.append(i.name)) == {}  # max 3
    assert [i.name for i in model.instances] == ["base", "base-auto-1", "base-auto-2"]
    assert scheduler.capacity == 6  # the slots grew with the instances

    wanted["n"] = 1
    assert await autoscale_once(catalog, lambda i: drained.append(i.name)) == {"m": -1}
    assert await autoscale_once(catalog, lambda i: drained.append(i.name)) == {"m": -1}
    assert await autoscale_once(catalog, lambda i: drained.append(i.name)) == {}  # never "base"
    assert drained == ["base-auto-2", "base-auto-1"]
    assert [i.name for i in model.instances] == ["base"] and scheduler.capacity == 2


async def test_models_without_autoscale_only_publish_the_signal() -> None:
    config = InstanceConfig(backend="echo", name="x")
    model = ServedModel("m", [Instance("m", "x", EchoBackend(config), config)])
    model.desired_replicas = lambda: 9  # type: ignore[method-assign]
    assert await autoscale_once(ModelCatalog([model], None), lambda i: None) == {}
    assert len(model.instances) == 1
