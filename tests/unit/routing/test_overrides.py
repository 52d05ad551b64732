"""Replaying instance overrides: added, changed in place, rebuilt, removed; idempotent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openautoglm.backends.echo import EchoBackend
from openautoglm.config.settings import InstanceConfig
from openautoglm.routing.catalog import Instance, ModelCatalog, ServedModel
from openautoglm.routing.overrides import apply_overrides


@dataclass(frozen=True)
class Change:
    model: str
    name: str
    config: dict[str, Any] | None


def catalog() -> tuple[ModelCatalog, ServedModel]:
    instances = [
        Instance("m", name, EchoBackend(config), config)
        for name in ("a", "b")
        for config in [InstanceConfig(backend="echo", name=name)]
    ]
    model = ServedModel("m", instances)
    return ModelCatalog([model], None), model


async def test_overrides_add_change_rebuild_and_remove_once() -> None:
    cat, model = catalog()
    drained: list[str] = []
    original_b = model.instance("b")
    changes = [
        Change("m", "c", {"backend": "echo", "name": "c"}),
        Change("m", "a", {"backend": "echo", "name": "a", "weight": 3}),
        Change("m", "b", {"backend": "echo", "name": "b", "reply": "new"}),
        Change("m", "gone", None),
        Change("unknown-model", "x", {"backend": "echo"}),
    ]
    await apply_overrides(cat, changes, lambda i: drained.append(i.name))
    assert [(i.name, i.weight) for i in model.instances] == [("a", 3.0), ("b", 1.0), ("c", 1.0)]
    assert model.instance("b") is not original_b and drained == ["b"]  # rebuilt: reply changed
    a = model.instance("a")
    await apply_overrides(cat, changes, lambda i: drained.append(i.name))
    assert model.instance("a") is a and drained == ["b"]  # nothing changes the second time
    await apply_overrides(cat, [Change("m", "c", None)], lambda i: drained.append(i.name))
    assert [i.name for i in model.instances] == ["a", "b"] and drained == ["b", "c"]
