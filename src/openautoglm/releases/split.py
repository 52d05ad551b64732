"""The traffic split: which version of a model serves each request during a canary release.

A model with a :class:`Route` sends ``weight`` percent of its traffic to the candidate and the rest
to the stable version. An explicit version (the ``X-AutoGLM-Version`` header) wins when that version
is serving.

Invariants: a conversation (``context_id``) is pinned to the version it first got during a release
and stays there while the weight moves between 0 and 100 exclusive, so it never flips mid-way; the
first assignment is a deterministic hash of release and context, so it survives a lost pin table.
A route without a candidate, or with a new release id or candidate (rollback, promotion, a new
release), drops the old release's pins. Pin tables are LRU-bounded. A shadow route serves
everything from stable and mirrors context-free (idempotent) requests to the candidate.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field

from openautoglm.core.errors import InvalidRequestError

MAX_PINS = 200_000


@dataclass(frozen=True, slots=True)
class Route:
    """How one model's traffic is split: ``weight`` is the candidate's percent (0..100)."""

    stable: str
    candidate: str | None = None
    weight: float = 0.0
    release_id: str | None = None
    shadow: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 100.0:
            raise InvalidRequestError(
                f"weight must be between 0 and 100, got {self.weight}", param="weight"
            )


@dataclass(slots=True)
class _ModelSplit:
    route: Route
    # context id -> whether it is on the candidate; insertion order is recency (LRU).
    pins: OrderedDict[str, bool] = field(default_factory=OrderedDict)


def bucket(release_id: str | None, context_id: str) -> float:
    """The context's deterministic place in [0, 100) for this release."""
    digest = hashlib.sha256(f"{release_id or ''}\x00{context_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100.0 / 2**64


class TrafficSplit:
    """Per-model routes and the sticky choice of a version for each request."""

    def __init__(self, rng: random.Random | None = None, max_pins: int = MAX_PINS) -> None:
        self._rng = rng or random.Random()
        self._max_pins = max_pins
        self._splits: dict[str, _ModelSplit] = {}

    def set_route(self, model: str, route: Route) -> None:
        """Install or move the model's route; pins survive only a weight change in one release."""
        current = self._splits.get(model)
        if (
            current is None
            or route.candidate is None
            or route.release_id != current.route.release_id
            or route.candidate != current.route.candidate
        ):
            self._splits[model] = _ModelSplit(route)
        else:
            current.route = route

    def clear(self, model: str) -> None:
        """Forget the model's route and pins (serve as if it had no versions)."""
        self._splits.pop(model, None)

    def route(self, model: str) -> Route | None:
        """The model's current route, if any."""
        split = self._splits.get(model)
        return split.route if split else None

    def models(self) -> list[str]:
        """The models that have a route."""
        return list(self._splits)

    def pinned(self, model: str) -> int:
        """How many contexts are pinned for the model's current release."""
        split = self._splits.get(model)
        return len(split.pins) if split else 0

    def choose(
        self,
        model: str,
        context_id: str | None,
        override: str | None,
        serving: Collection[str],
    ) -> str | None:
        """The version that serves this request, or ``None`` when the model has no route.

        Raises :class:`InvalidRequestError` (``version_not_serving``) for an override that is not
        among ``serving``.
        """
        if override is not None:
            if override in serving:
                return override
            raise InvalidRequestError(
                f"version {override!r} of model {model!r} is not serving;"
                f" serving: {', '.join(sorted(serving)) or 'none'}",
                param="version",
                code="version_not_serving",
            )
        split = self._splits.get(model)
        if split is None:
            return None
        route = split.route
        if route.candidate is None or route.shadow or route.weight <= 0.0:
            return route.stable
        if route.weight >= 100.0:
            return route.candidate
        if context_id is None:
            on_candidate = self._rng.random() * 100.0 < route.weight
        else:
            on_candidate = self._pin(split, context_id)
        return route.candidate if on_candidate else route.stable

    def mirror(self, model: str, context_id: str | None) -> str | None:
        """The candidate that should get a shadow copy of this request, if any.

        Only context-free requests are mirrored: they store nothing, so a copy has no side effect.
        ``weight`` is the share of them that is copied.
        """
        split = self._splits.get(model)
        if split is None or context_id is not None:
            return None
        route = split.route
        if not route.shadow or route.candidate is None or route.weight <= 0.0:
            return None
        if route.weight >= 100.0 or self._rng.random() * 100.0 < route.weight:
            return route.candidate
        return None

    def _pin(self, split: _ModelSplit, context_id: str) -> bool:
        pins = split.pins
        on_candidate = pins.get(context_id)
        if on_candidate is not None:
            pins.move_to_end(context_id)
            return on_candidate
        on_candidate = bucket(split.route.release_id, context_id) < split.route.weight
        pins[context_id] = on_candidate
        if len(pins) > self._max_pins:
            pins.popitem(last=False)
        return on_candidate
