"""Instance changes from the admin API, kept in the store and replayed on every replica.

A replica applies every override (in revision order) over its YAML instances on start, and
again whenever the highest revision in the store moves (polled every ``interval_s``): a new
instance is built and started, a changed weight/region/labels/concurrency applies in place, any
other change (a new ``base_url``, say) starts a replacement and drains the old one, and a removed
instance is drained and closed. Applying the same overrides twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from openautoglm.backends.factory import build_backend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import OpenAutoGLMError
from openautoglm.routing.catalog import Instance, ModelCatalog

logger = logging.getLogger(__name__)
LIVE_FIELDS = frozenset({"weight", "region", "labels", "max_concurrency"})
Drainer = Callable[[Instance], None]


class Override(Protocol):
    @property
    def model(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> dict[str, Any] | None: ...


class OverrideStore(Protocol):
    async def put(self, model: str, name: str, config: dict[str, Any] | None) -> int: ...

    async def revision(self) -> int: ...

    async def all(self) -> list[Any]: ...


async def apply_overrides(catalog: ModelCatalog, overrides: list[Any], drain: Drainer) -> None:
    """Bring the catalog's instances in line with ``overrides`` (see the module docstring)."""
    for override in overrides:
        try:
            await _apply(catalog, override, drain)
        except (OpenAutoGLMError, ValueError) as exc:
            logger.warning(
                "instance override %s/%s not applied: %s", override.model, override.name, exc
            )


async def _apply(catalog: ModelCatalog, override: Override, drain: Drainer) -> None:
    model = catalog.get(override.model)
    existing = next((i for i in model.instances if i.name == override.name), None)
    if override.config is None:
        if existing is not None and len(model.instances) > 1:
            drain(model.remove(existing.name))
        return
    config = InstanceConfig.model_validate(override.config)
    if existing is not None and existing.config == config:
        return
    if existing is not None and _only_live_changes(existing.config, config):
        existing.config = config
        model.capacity_changed()
        return
    instance = Instance(model.name, override.name, build_backend(config, model.name), config)
    await instance.backend.start()
    if existing is not None:
        drain(model.replace(existing, instance))
    else:
        model.add(instance)


def _only_live_changes(old: InstanceConfig, new: InstanceConfig) -> bool:
    return old.model_dump(exclude=set(LIVE_FIELDS)) == new.model_dump(exclude=set(LIVE_FIELDS))


class InstanceSync:
    """Keeps this replica's instances in line with the store's overrides."""

    def __init__(self, store: OverrideStore, catalog: ModelCatalog, drain: Drainer) -> None:
        self.store = store
        self._catalog = catalog
        self._drain = drain
        self._seen = 0

    async def refresh(self) -> None:
        revision = await self.store.revision()
        if revision == self._seen:
            return
        await apply_overrides(self._catalog, await self.store.all(), self._drain)
        self._seen = revision

    async def record(self, model: str, name: str, config: InstanceConfig | None) -> None:
        """Store a change made here (it is already applied locally)."""
        dumped = None if config is None else config.model_dump(mode="json", exclude_none=True)
        revision = await self.store.put(model, name, dumped)
        if revision == self._seen + 1:  # nothing from other replicas in between
            self._seen = revision

    async def run(self, interval_s: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # a failed reload keeps the instances as they are
                logger.warning("reloading instance changes failed: %s", exc)
