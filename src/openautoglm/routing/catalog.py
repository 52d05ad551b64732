"""The served models: each name maps to one or more instances (replicas), each a backend.

Each model has a balancer (``routing/balancers.py``; smooth weighted round robin by default)
and each instance a circuit breaker (``routing/breaker.py``). ``ServedModel.pick`` chooses among
the instances whose breaker lets a call through, minus those a retry already tried; outcomes
come back through ``ServedModel.record`` so breakers and latency-aware balancers learn.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from openautoglm.backends.base import Backend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.clock import Clock, SystemClock
from openautoglm.core.errors import (
    ConflictError,
    ModelNotFoundError,
    NotFoundError,
    ServiceUnavailableError,
)
from openautoglm.core.types import Capabilities
from openautoglm.routing.balancers import Balancer, SmoothWeightedRoundRobin
from openautoglm.routing.breaker import BreakerSettings, BreakerState, CircuitBreaker
from openautoglm.routing.retry_budget import RetryBudget
from openautoglm.scheduling.scheduler import ModelScheduler


@dataclass(eq=False)
class Instance:
    """One replica of a model: a backend plus its settings and live counters."""

    model: str
    name: str
    backend: Backend
    config: InstanceConfig
    in_flight: int = 0
    version: str | None = None  # the registry version it serves (None: configured in YAML)
    breaker: CircuitBreaker = field(
        default_factory=lambda: CircuitBreaker(SystemClock()), repr=False
    )

    @property
    def weight(self) -> float:
        return self.config.weight


@dataclass(frozen=True, slots=True)
class Resilience:
    """How a model copes with failing instances and models."""

    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    max_attempts: int = 3
    retry_ratio: float = 0.2
    retry_min_per_s: float = 10.0
    health_check_interval_s: float = 5.0
    fallbacks: tuple[str, ...] = ()
    fallback_on: frozenset[str] = frozenset({"unavailable", "upstream", "timeout", "backend"})
    default_priority: int = 5
    target_wait_s: float = 0.5
    min_replicas: int = 1
    max_replicas: int = 16
    autoscale: bool = False


class ServedModel:
    """A model name clients ask for, with its instances."""

    def __init__(
        self,
        name: str,
        instances: Sequence[Instance],
        balancer: Balancer | None = None,
        resilience: Resilience | None = None,
        clock: Clock | None = None,
        scheduler: ModelScheduler | None = None,
    ) -> None:
        if not instances:
            raise ValueError(f"model '{name}' needs at least one instance")
        self.name = name
        self.instances = list(instances)
        self.balancer: Balancer = balancer or SmoothWeightedRoundRobin()
        self.resilience = resilience or Resilience()
        self._clock = clock = clock or SystemClock()
        for instance in self.instances:
            instance.breaker = CircuitBreaker(clock, self.resilience.breaker)
        self.retry_budget = RetryBudget(
            clock, self.resilience.retry_ratio, self.resilience.retry_min_per_s
        )
        self.scheduler = scheduler

    @property
    def capacity(self) -> int:
        """Concurrent calls the instances take together (the scheduler's slots)."""
        return sum(instance.config.max_concurrency for instance in self.instances)

    def capacity_changed(self) -> None:
        """Instances came, went or changed: resize the scheduler."""
        if self.scheduler is not None:
            self.scheduler.set_capacity(max(1, self.capacity))

    def desired_replicas(self) -> int:
        """The scaling signal: replicas that would keep the queue wait near the target."""
        if self.scheduler is None:
            return len(self.instances)
        per_replica = max(1.0, self.capacity / len(self.instances))
        slots = self.scheduler.desired_capacity(self.resilience.target_wait_s)
        wanted = math.ceil(slots / per_replica)
        return max(self.resilience.min_replicas, min(self.resilience.max_replicas, wanted))

    @property
    def capabilities(self) -> Capabilities:
        """What every instance of the model can do (instances of one model are alike)."""
        return self.instances[0].backend.capabilities

    def pick(
        self,
        among: Sequence[Instance] | None = None,
        key: str | None = None,
        exclude: Collection[Instance] = (),
    ) -> Instance:
        """The next instance: by the model's balancer, among ``among`` (default: all) whose
        breaker lets a call through, leaving out ``exclude``; ``key`` is the context id (for
        consistent hashing). Raises 503 when none is available."""
        candidates = [
            instance
            for instance in (self.instances if among is None else among)
            if instance not in exclude and _available(instance.breaker)
        ]
        while candidates:
            chosen = self.balancer.choose(candidates, key)
            if chosen.breaker.allow():  # in half-open, this call is the probe
                return chosen
            candidates.remove(chosen)
        waits = [i.breaker.retry_in_s for i in self.instances if i not in exclude]
        error = ServiceUnavailableError(
            f"no instance of model '{self.name}' is available (circuit breakers open)",
            code="no_healthy_instance",
        )
        error.retry_after_s = max(1.0, min(waits, default=1.0))
        raise error

    def instance(self, name: str) -> Instance:
        """The instance called ``name``; ``NotFoundError`` if there is none."""
        for instance in self.instances:
            if instance.name == name:
                return instance
        raise NotFoundError(
            f"model '{self.name}' has no instance '{name}'", code="instance_not_found"
        )

    def add(self, instance: Instance) -> None:
        """Serve ``instance`` from the next pick on (a new breaker, closed)."""
        if any(existing.name == instance.name for existing in self.instances):
            raise ConflictError(
                f"model '{self.name}' already has an instance '{instance.name}'",
                code="instance_exists",
            )
        instance.breaker = CircuitBreaker(self._clock, self.resilience.breaker)
        self.instances = [*self.instances, instance]
        self.capacity_changed()

    def remove(self, name: str) -> Instance:
        """Stop picking instance ``name`` (calls already on it finish); it is returned."""
        instance = self.instance(name)
        if len(self.instances) == 1:
            raise ConflictError(
                f"'{name}' is the last instance of model '{self.name}'", code="last_instance"
            )
        self.instances = [i for i in self.instances if i is not instance]
        self.capacity_changed()
        return instance

    def replace(self, old: Instance, new: Instance) -> Instance:
        """Serve ``new`` in ``old``'s place (same name); ``old`` is returned for draining."""
        new.breaker = CircuitBreaker(self._clock, self.resilience.breaker)
        self.instances = [new if instance is old else instance for instance in self.instances]
        self.capacity_changed()
        return old

    def record(self, instance: Instance, ok: bool, latency_s: float | None = None) -> None:
        """The outcome of a call on ``instance``: feeds its breaker and the balancer."""
        if ok:
            instance.breaker.record_success()
            if latency_s is not None:
                self.balancer.observe(instance.name, latency_s)
        else:
            instance.breaker.record_failure()


def _available(breaker: CircuitBreaker) -> bool:
    if breaker.state is BreakerState.CLOSED:
        return True
    if breaker.state is BreakerState.OPEN:
        return breaker.retry_in_s <= 0
    return not breaker.probing


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

    def add_model(self, model: ServedModel) -> None:
        """Serve a new model name (the registry's models appear this way)."""
        if model.name in self._models:
            raise ConflictError(f"model '{model.name}' is already served", code="model_exists")
        self._models[model.name] = model
        if self.default_model is None:
            self.default_model = model.name

    def remove_model(self, name: str) -> ServedModel:
        """Stop serving ``name``; its instances are returned for draining."""
        model = self._models.pop(name)
        if self.default_model == name:
            self.default_model = next(iter(self._models), None)
        return model

    def __contains__(self, name: object) -> bool:
        return name in self._models

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
