"""Release records: a move of a model's traffic from its stable version to a candidate.

``running → paused → running``; a running or paused release ends ``promoted`` (the candidate
became the champion), ``rolled_back`` (analysis failed, or an operator said so; the candidate
goes to ``needs_iteration``) or ``aborted`` (an operator stopped it; the candidate stays
approved). A promoted release can still be rolled back, instantly, to its stable version.

``step_index`` is -1 during a shadow phase (the candidate gets copies of requests, no live
traffic), then indexes ``steps`` (the candidate's percentages).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from itertools import pairwise
from typing import Any, Protocol

from openautoglm.core.errors import InvalidRequestError
from openautoglm.registry.model import OutboxEvent

MAX_STEPS = 20


class ReleaseState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def active(self) -> bool:
        return self in (ReleaseState.RUNNING, ReleaseState.PAUSED)


@dataclass(frozen=True, slots=True)
class Release:
    """One release of a model; ``revision`` guards concurrent changes."""

    id: str
    model: str
    state: ReleaseState
    stable_version: str
    candidate_version: str
    steps: tuple[float, ...]
    interval_s: int
    step_index: int
    shadow: bool
    thresholds: Mapping[str, Any]
    started_at: datetime
    step_started_at: datetime
    started_by: str | None = None
    finished_at: datetime | None = None
    reason: str | None = None
    revision: int = 1

    @property
    def weight(self) -> float:
        """The candidate's share of live traffic, in percent."""
        if self.state is ReleaseState.PROMOTED:
            return 100.0
        if not self.state.active or self.step_index < 0:
            return 0.0
        return self.steps[self.step_index]

    @property
    def mirroring(self) -> bool:
        """Whether requests are copied to the candidate (the shadow phase)."""
        return self.state.active and self.step_index < 0

    @property
    def last_step(self) -> bool:
        return self.step_index == len(self.steps) - 1


class ReleaseStore(Protocol):
    """Where releases are kept (``store/releases_sql.py``)."""

    async def add(self, release: Release, events: Sequence[OutboxEvent]) -> None:
        """Store a new release; ``ConflictError`` when the model already has an active one."""
        ...

    async def update(self, release: Release, events: Sequence[OutboxEvent]) -> Release:
        """Store ``release`` over the stored one at ``release.revision - 1``; ``ConflictError``
        when another replica changed it meanwhile."""
        ...

    async def add_in(
        self, connection: Any, release: Release, events: Sequence[OutboxEvent]
    ) -> None:
        """``add`` inside a transaction the registry opened (with the candidate's move)."""
        ...

    async def update_in(
        self, connection: Any, release: Release, events: Sequence[OutboxEvent]
    ) -> None:
        """``update`` inside a transaction the registry opened (with the candidate's move)."""
        ...

    async def get(self, release_id: str) -> Release | None: ...

    async def list(self, model: str | None = None, active_only: bool = False) -> list[Release]: ...

    async def latest(self, model: str) -> Release | None: ...


def checked_steps(steps: Sequence[float]) -> tuple[float, ...]:
    """Candidate percentages: rising, in (0, 100], ending at 100."""
    if not steps or len(steps) > MAX_STEPS:
        raise InvalidRequestError(f"give 1-{MAX_STEPS} steps", param="steps")
    if any(not 0 < step <= 100 for step in steps):
        raise InvalidRequestError("each step is a percentage in (0, 100]", param="steps")
    if any(later <= earlier for earlier, later in pairwise(steps)):
        raise InvalidRequestError("steps must rise", param="steps")
    if steps[-1] != 100:
        raise InvalidRequestError("the last step must be 100", param="steps")
    return tuple(float(step) for step in steps)


def release_event(release: Release, what: str) -> OutboxEvent:
    """The ``release.changed`` webhook (and audit detail) of a change."""
    return OutboxEvent(
        "release.changed",
        {
            "release": release.id,
            "model": release.model,
            "change": what,
            "state": release.state.value,
            "stable": release.stable_version,
            "candidate": release.candidate_version,
            "weight": release.weight,
            "reason": release.reason,
        },
    )
