"""Registry versions in the catalog: the instances of every version that serves traffic.

A version serves when it is its model's champion, the stable or candidate of an active
release, or held for a validation run on this replica. :meth:`VersionServing.ensure` builds and
starts the missing instances (named ``<version>/<instance>``) before the traffic split may send
anything to them; :meth:`VersionServing.prune` drains and closes those of versions that stopped
serving, after the split moved away from them. A model only the registry knows is added to the
catalog with its first serving version and removed with its last.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from openautoglm.backends.factory import build_backend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.clock import Clock
from openautoglm.registry.model import RegistryStore
from openautoglm.routing.catalog import Instance, ModelCatalog, ServedModel

logger = logging.getLogger(__name__)
Drainer = Callable[[Instance], None]


class VersionServing:
    """Keeps versioned instances in the catalog in step with what serves."""

    def __init__(
        self, catalog: ModelCatalog, registry: RegistryStore, drain: Drainer, clock: Clock
    ) -> None:
        self._catalog = catalog
        self._registry = registry
        self._drain = drain
        self._clock = clock
        self._held: dict[tuple[str, str], int] = {}

    def held(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for model, version in self._held:
            out.setdefault(model, set()).add(version)
        return out

    async def ensure(self, wanted: Mapping[str, set[str]]) -> None:
        """Start the instances of every wanted version that has none here yet."""
        for model_name, versions in wanted.items():
            for version in sorted(versions):
                if self._has(model_name, version):
                    continue
                try:
                    await self._start(model_name, version)
                except Exception:  # one version that cannot start must not stop the others
                    logger.exception("version %s of %s could not start", version, model_name)

    def has(self, model: str, version: str) -> bool:
        """Whether ``version`` of ``model`` has instances here."""
        return self._has(model, version)

    async def prune(self, wanted: Mapping[str, set[str]]) -> None:
        """Drain the instances of versions neither wanted nor held."""
        keep = {m: set(v) for m, v in wanted.items()}
        for model, versions in self.held().items():
            keep.setdefault(model, set()).update(versions)
        for served in list(self._catalog):
            stale = [
                i
                for i in served.instances
                if i.version is not None and i.version not in keep.get(served.name, set())
            ]
            if not stale:
                continue
            if len(stale) == len(served.instances):
                self._catalog.remove_model(served.name)
            else:
                for instance in stale:
                    served.remove(instance.name)
            for instance in stale:
                logger.info("version %s of %s stopped serving", instance.version, served.name)
                self._drain(instance)

    @asynccontextmanager
    async def hold(self, model: str, version: str) -> AsyncIterator[None]:
        """Serve ``version`` on this replica while the block runs (a validation run)."""
        key = (model, version)
        self._held[key] = self._held.get(key, 0) + 1
        try:
            await self.ensure({model: {version}})
            yield
        finally:
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]

    def _has(self, model: str, version: str) -> bool:
        if model not in self._catalog:
            return False
        return any(i.version == version for i in self._catalog.get(model).instances)

    async def _start(self, model_name: str, version: str) -> None:
        found = await self._registry.get_version(model_name, version)
        if found is None:
            logger.warning("%s version %s is not in the registry", model_name, version)
            return
        instances = []
        for spec in found.instances:
            config = InstanceConfig(**spec)
            instances.append(
                Instance(
                    model=model_name,
                    name=f"{version}/{config.name}",
                    backend=build_backend(config, model_name),
                    config=config,
                    version=version,
                )
            )
        started: list[Instance] = []
        try:
            for instance in instances:
                await instance.backend.start()
                started.append(instance)
        except BaseException:
            for instance in started:
                await instance.backend.close()
            raise
        if model_name in self._catalog:
            served = self._catalog.get(model_name)
            for instance in instances:
                served.add(instance)
        else:
            self._catalog.add_model(ServedModel(model_name, instances, clock=self._clock))
        logger.info("version %s of %s serves (%d instances)", version, model_name, len(instances))
