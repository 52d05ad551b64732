"""The loop that keeps a replica's serving versions, traffic split and releases current.

:meth:`ReleaseRuntime.sync` reads champions and active releases from the store, starts the
instances of every version that must serve, only then points the traffic split at them, and
finally drains versions that stopped serving — so no request is routed to a version that has no
instance. :func:`run_releases` ticks the controller every ``tick_s`` (analysis, rollback,
advance, promotion) and syncs every ``reload_s`` (what other replicas and the API changed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from openautoglm.core.errors import OpenAutoGLMError
from openautoglm.releases.controller import ReleaseController
from openautoglm.routing.versions import VersionServing

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ReleaseRuntime:
    """The controller and the versioned instances, synchronised one step at a time."""

    def __init__(self, controller: ReleaseController, serving: VersionServing) -> None:
        self.controller = controller
        self.serving = serving
        self._lock = asyncio.Lock()

    async def sync(self) -> None:
        async with self._lock:
            await self.controller.load()
            wanted = self.controller.serving()
            await self.serving.ensure(wanted)
            self.controller.apply_routes(self.serving.has)
            await self.serving.prune(wanted)

    async def run_locked(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run an operator's action on the releases without a sync or tick in between."""
        async with self._lock:
            return await action()

    async def tick(self) -> bool:
        """Analyse and move releases; True when one changed (then the caller syncs)."""
        async with self._lock:
            return bool(await self.controller.tick())


async def run_releases(runtime: ReleaseRuntime, tick_s: float, reload_s: float) -> None:
    """Tick releases and sync serving versions until cancelled; errors are logged, not fatal."""
    last_sync = time.monotonic()
    while True:
        await asyncio.sleep(tick_s)
        try:
            changed = await runtime.tick()
            if changed or time.monotonic() - last_sync >= reload_s:
                await runtime.sync()
                last_sync = time.monotonic()
        except (OpenAutoGLMError, SQLAlchemyError, OSError) as exc:
            logger.warning("release loop: %s", exc)
        except Exception:  # the loop keeps rollbacks working: it must not die
            logger.exception("release loop failed; going on")
