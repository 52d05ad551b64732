"""The served models: each name maps to one or more instances (replicas), each a backend.

Instance choice here is smooth weighted round robin (nginx-style): over any window of
``sum(weights)`` picks, each instance is chosen exactly ``weight`` times, evenly spread.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from openautoglm.backends.base import Backend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import ModelNotFoundError
from openautoglm.core.types import Capabilities


@dataclass(eq=False)
class Instance:
    """One replica of a model: a backend plus its settings and live counters."""

    model: str
    name: str
    backend: Backend
    config: InstanceConfig
    in_flight: int = 0
    _current_weight: float = field(default=0.0, repr=False)


class ServedModel:
    """A model name clients ask for, with its instances."""

    def __init__(self, name: str, instances: Sequence[Instance]) -> None:
        if not instances:
            raise ValueError(f"model '{name}' needs at least one instance")
        self.name = name
        self.instances = list(instances)

    @property
    def capabilities(self) -> Capabilities:
        """What every instance of the model can do (instances of one model are alike)."""
        return self.instances[0].backend.capabilities

    def pick(self, among: Sequence[Instance] | None = None) -> Instance:
        """The next instance by smooth weighted round robin (over ``among`` when given)."""
        candidates = self.instances if among is None else among
        if len(candidates) == 1:
            return candidates[0]
        total = sum(instance.config.weight for instance in candidates)
        best = candidates[0]
        for instance in candidates:
            instance._current_weight += instance.config.weight
            if instance._current_weight > best._current_weight:
                best = instance
        best._current_weight -= total
        return best


def model_not_found(name: str | None) -> ModelNotFoundError:
    """The error for a model that is unknown, or that the caller may not use (same answer)."""
    return ModelNotFoundError(
        f"The model '{name}' does not exist or you do not have access to it.", param="model"
    )


class ModelCatalog:
    """All served models by name, and the default model for requests that name none."""

    def __init__(self, models: Iterable[ServedModel], default_model: str | None = None) -> None:
        self._models = {model.name: model for model in models}
        if default_model is not None and default_model not in self._models:
            raise ValueError(f"default model '{default_model}' is not configured")
        self.default_model = default_model or next(iter(self._models), None)

    def get(self, name: str | None) -> ServedModel:
        """The model called ``name`` (the default when ``None``), or ``ModelNotFoundError``."""
        chosen = name or self.default_model
        model = self._models.get(chosen) if chosen else None
        if model is None:
            raise model_not_found(chosen)
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    @property
    def instances(self) -> list[Instance]:
        return [instance for model in self._models.values() for instance in model.instances]

    async def start(self) -> None:
        """Start every backend (load weights, open pools)."""
        for instance in self.instances:
            await instance.backend.start()

    async def close(self) -> None:
        for instance in self.instances:
            await instance.backend.close()
