"""Model versions on the request path: which version serves a call, what each version's calls
did (for release analysis), and shadow copies of requests to a candidate.

A model whose instances carry no version (configured in the YAML) is routed as before. Once
the registry serves versions of it, every call goes to exactly one version — the one the
traffic split chooses, or the one the ``X-AutoGLM-Version`` header names — and retries stay
within that version, so a conversation never crosses versions and a candidate's failures are
its own.
"""

from __future__ import annotations

import asyncio
import logging
import time

from openautoglm.core.clock import Clock, SystemClock
from openautoglm.core.errors import OpenAutoGLMError, ServiceUnavailableError
from openautoglm.core.types import GenerationRequest
from openautoglm.gateway.failover import INSTANCE_FAILURES, failure_class
from openautoglm.releases.analysis import Sample, VersionTraffic
from openautoglm.releases.split import TrafficSplit
from openautoglm.routing.catalog import Instance, ServedModel

logger = logging.getLogger(__name__)
MAX_SHADOW_CALLS = 32


def serving_versions(model: ServedModel) -> set[str]:
    return {instance.version for instance in model.instances if instance.version is not None}


class VersionRouting:
    """The split, the per-version traffic windows and the shadow copies, for the gateway."""

    def __init__(
        self, split: TrafficSplit, traffic: VersionTraffic, clock: Clock | None = None
    ) -> None:
        self.split = split
        self.traffic = traffic
        self._clock = clock or SystemClock()
        self._shadows: set[asyncio.Task[None]] = set()

    def choose(
        self, model: ServedModel, request: GenerationRequest
    ) -> tuple[str | None, list[Instance] | None]:
        """The version for this call and the instances that may serve it; ``(None, None)`` for a
        model served without versions (every instance may serve it)."""
        versioned = any(instance.version is not None for instance in model.instances)
        if not versioned and request.version is None:
            return None, None
        serving = serving_versions(model)
        chosen = self.split.choose(model.name, request.context_id, request.version, serving)
        if chosen is None:  # versions are starting (validation) but none serves traffic yet
            return None, instances_of(model, None)
        return chosen, instances_of(model, chosen)

    def record(
        self,
        instance: Instance,
        error: BaseException | None,
        latency_s: float,
        ttft_s: float | None,
        blocked: bool,
        shadow: bool = False,
    ) -> None:
        """A finished call on a versioned instance; the caller's own errors are not counted."""
        if instance.version is None:
            return
        failed = error is not None and failure_class(error) in INSTANCE_FAILURES
        if error is not None and not failed:
            return  # refused before the model answered, or cancelled: says nothing of it
        sample = Sample(self._clock.monotonic(), failed, latency_s, ttft_s, blocked, shadow)
        self.traffic.record(instance.model, instance.version, sample)

    def mirror(self, model: ServedModel, request: GenerationRequest) -> None:
        """Copy an idempotent call to the shadow candidate, if a shadow phase runs; the copy's
        answer is thrown away, its outcome recorded."""
        version = self.split.mirror(model.name, request.context_id)
        if version is None or request.version is not None:
            return
        if len(self._shadows) >= MAX_SHADOW_CALLS:
            return  # never let copies pile up behind a slow candidate
        among = [instance for instance in model.instances if instance.version == version]
        if not among:
            return
        try:
            instance = model.pick(among=among)
        except ServiceUnavailableError:
            return
        task = asyncio.ensure_future(self._shadow_call(instance, request))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow_call(self, instance: Instance, request: GenerationRequest) -> None:
        started = time.monotonic()
        first: float | None = None
        error: BaseException | None = None
        instance.in_flight += 1
        try:
            async for _chunk in instance.backend.generate(request):
                if first is None:
                    first = time.monotonic() - started
        except OpenAutoGLMError as exc:
            error = exc
        except Exception as exc:  # a shadow copy must never hurt anything
            logger.warning("shadow call to %s failed: %s", instance.name, exc)
            return
        finally:
            instance.in_flight -= 1
        self.record(instance, error, time.monotonic() - started, first, False, shadow=True)

    async def close(self) -> None:
        for task in self._shadows:
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)


def instances_of(model: ServedModel, version: str | None) -> list[Instance]:
    """The instances that serve ``version`` (None: the unversioned ones from the YAML)."""
    return [instance for instance in model.instances if instance.version == version]
