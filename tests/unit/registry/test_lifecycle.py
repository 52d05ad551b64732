"""The version lifecycle: the transition table, four-eyes approval, reasons for rejections."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from openautoglm.core.errors import InvalidRequestError, PermissionDeniedError
from openautoglm.registry.lifecycle import (
    VERSION_TRANSITIONS,
    Actor,
    LifecycleConflict,
    Transition,
    VersionState,
    transition,
)

AT = datetime(2026, 11, 25, tzinfo=UTC)
S = VersionState


def move(current: VersionState, target: VersionState, **kwargs: object) -> Transition:
    options: dict[str, object] = {
        "actor": Actor("alice", can_approve=True),
        "submitted_by": "bob",
        "reason": None,
    }
    options.update(kwargs)
    return transition(
        model="glm",
        version="3",
        current=current,
        target=target,
        at=AT,
        **options,  # type: ignore[arg-type]
    )


def test_the_happy_path_and_the_iteration_loop_are_allowed() -> None:
    path = [
        S.DEVELOPMENT,
        S.PENDING_APPROVAL,
        S.DEPLOYED,
        S.MONITORING,
        S.NEEDS_ITERATION,
        S.DEVELOPMENT,
    ]
    for current, target in itertools.pairwise(path):
        record = move(current, target)
        assert record.from_state is current and record.to_state is target


def test_every_live_state_can_be_deprecated_and_only_deprecated_can_be_archived() -> None:
    for state in S:
        can_archive = S.ARCHIVED in VERSION_TRANSITIONS[state]
        assert can_archive == (state is S.DEPRECATED)
        assert (S.DEPRECATED in VERSION_TRANSITIONS[state]) == (
            state not in (S.DEPRECATED, S.ARCHIVED)
        )
    assert VERSION_TRANSITIONS[S.ARCHIVED] == frozenset()


def test_a_forbidden_move_is_a_409_naming_what_is_allowed() -> None:
    with pytest.raises(LifecycleConflict) as refused:
        move(S.DEVELOPMENT, S.DEPLOYED)
    assert refused.value.status == 409
    assert str(refused.value) == (
        "glm version 3 is development: it cannot go to deployed; "
        "allowed: deprecated, pending_approval"
    )
    with pytest.raises(LifecycleConflict, match="allowed: nothing"):
        move(S.ARCHIVED, S.DEVELOPMENT)


def test_approval_needs_the_permission_and_a_second_person() -> None:
    with pytest.raises(PermissionDeniedError) as no_permission:
        move(S.PENDING_APPROVAL, S.DEPLOYED, actor=Actor("carol"))
    assert no_permission.value.code == "approver_required"
    with pytest.raises(PermissionDeniedError) as self_approval:
        move(S.PENDING_APPROVAL, S.DEPLOYED, actor=Actor("bob", can_approve=True))
    assert self_approval.value.code == "four_eyes_required"
    assert move(S.PENDING_APPROVAL, S.DEPLOYED).actor == "alice"


def test_a_rejection_needs_a_reason() -> None:
    with pytest.raises(InvalidRequestError):
        move(S.PENDING_APPROVAL, S.DEVELOPMENT, reason="  ")
    record = move(S.PENDING_APPROVAL, S.DEVELOPMENT, reason="accuracy 0.71 < 0.8")
    assert record.reason == "accuracy 0.71 < 0.8"
