"""The lifecycle of a model version: one table of allowed transitions, and four-eyes approval.

``development → pending_approval → deployed → monitoring → needs_iteration → development …``;
a submission may be rejected back to development (with a reason); any live state may go to
``deprecated``, and a deprecated version to ``archived``, which is final.

Invariants: a version changes state only through :func:`transition`, which refuses anything not in
``VERSION_TRANSITIONS`` with a :class:`LifecycleConflict` (409) naming both states and what is
allowed instead; ``pending_approval → deployed`` needs an actor holding the approver permission
who is not the one who submitted the version; a rejection needs a reason. Every accepted move
returns a :class:`Transition` record for the audit log and the webhooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from openautoglm.core.errors import ConflictError, InvalidRequestError, PermissionDeniedError


class VersionState(Enum):
    DEVELOPMENT = "development"
    PENDING_APPROVAL = "pending_approval"
    DEPLOYED = "deployed"
    MONITORING = "monitoring"
    NEEDS_ITERATION = "needs_iteration"
    DEPRECATED = "deprecated"
    ARCHIVED = "archived"


_LIVE = (
    VersionState.DEVELOPMENT,
    VersionState.PENDING_APPROVAL,
    VersionState.DEPLOYED,
    VersionState.MONITORING,
    VersionState.NEEDS_ITERATION,
)

_FORWARD: dict[VersionState, frozenset[VersionState]] = {
    VersionState.DEVELOPMENT: frozenset({VersionState.PENDING_APPROVAL}),
    VersionState.PENDING_APPROVAL: frozenset({VersionState.DEPLOYED, VersionState.DEVELOPMENT}),
    VersionState.DEPLOYED: frozenset({VersionState.MONITORING, VersionState.NEEDS_ITERATION}),
    VersionState.MONITORING: frozenset({VersionState.NEEDS_ITERATION, VersionState.DEPLOYED}),
    VersionState.NEEDS_ITERATION: frozenset({VersionState.DEVELOPMENT}),
    VersionState.DEPRECATED: frozenset({VersionState.ARCHIVED}),
    VersionState.ARCHIVED: frozenset(),
}
VERSION_TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    state: targets | ({VersionState.DEPRECATED} if state in _LIVE else set())
    for state, targets in _FORWARD.items()
}


class LifecycleConflict(ConflictError):
    """A transition the lifecycle does not allow from the version's current state."""

    code = "invalid_state_transition"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a transition, and whether they may approve deployments."""

    user_id: str
    can_approve: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    """One accepted move, as the audit log and the webhooks receive it."""

    model: str
    version: str
    from_state: VersionState
    to_state: VersionState
    actor: str
    at: datetime
    reason: str | None = None


def allowed_next(state: VersionState) -> list[str]:
    """The states reachable from ``state``, sorted by name (for error messages and UIs)."""
    return sorted(s.value for s in VERSION_TRANSITIONS[state])


def transition(
    *,
    model: str,
    version: str,
    current: VersionState,
    target: VersionState,
    actor: Actor,
    submitted_by: str | None,
    at: datetime,
    reason: str | None = None,
) -> Transition:
    """Check a requested move and return its record; raise when the lifecycle forbids it."""
    if target not in VERSION_TRANSITIONS[current]:
        allowed = ", ".join(allowed_next(current)) or "nothing (final)"
        raise LifecycleConflict(
            f"{model} version {version} is {current.value}: it cannot go to {target.value}; "
            f"allowed: {allowed}"
        )
    if current is VersionState.PENDING_APPROVAL and target is VersionState.DEPLOYED:
        if not actor.can_approve:
            raise PermissionDeniedError(
                f"approving {model} version {version} needs the approver permission",
                code="approver_required",
            )
        if actor.user_id == submitted_by:
            raise PermissionDeniedError(
                f"{actor.user_id} submitted {model} version {version} and cannot also approve it",
                code="four_eyes_required",
            )
    rejecting = current is VersionState.PENDING_APPROVAL and target is VersionState.DEVELOPMENT
    if rejecting and not (reason and reason.strip()):
        raise InvalidRequestError("a rejection needs a reason", param="reason")
    return Transition(model, version, current, target, actor.user_id, at, reason)
