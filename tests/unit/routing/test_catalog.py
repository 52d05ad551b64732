"""Model catalog: lookup, default model, smooth weighted round robin."""

from __future__ import annotations

import pytest

from openautoglm.backends.echo import EchoBackend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import ModelNotFoundError
from openautoglm.routing.catalog import Instance, ModelCatalog, ServedModel


def pool(*weights: float) -> ServedModel:
    instances = []
    for index, weight in enumerate(weights):
        config = InstanceConfig(name=f"i{index}", backend="echo", weight=weight)
        instances.append(Instance("m", f"i{index}", EchoBackend(config), config))
    return ServedModel("m", instances)


def test_smooth_weighted_round_robin_is_exact_and_spread() -> None:
    model = pool(5, 1, 1)
    picks = [model.pick().name for _ in range(7)]
    assert picks == ["i0", "i0", "i1", "i0", "i2", "i0", "i0"]
    many = [model.pick().name for _ in range(700)]
    assert (many.count("i0"), many.count("i1"), many.count("i2")) == (500, 100, 100)


def test_lookup_default_and_unknown() -> None:
    catalog = ModelCatalog([pool(1)])
    assert catalog.get(None).name == "m" and catalog.default_model == "m"
    with pytest.raises(ModelNotFoundError) as missing:
        catalog.get("other")
    assert missing.value.param == "model" and "other" in missing.value.message
    with pytest.raises(ValueError, match="not configured"):
        ModelCatalog([pool(1)], default_model="nope")
