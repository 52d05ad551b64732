"""Workflow runs on the wire, shared by both clients: the requests, the run body, when to poll.

The clients only send and wait; what to send and what a reply means is here. A run is returned
as the server's JSON object (``id``, ``workflow``, ``state``, ``inputs``, ``outputs``, ``error``,
``tasks``…). Invariant of :func:`next_poll_s`: it answers ``None`` only for a finished run, and
raises :class:`APITimeoutError` rather than ask for a wait past the deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from openautoglm.sdk._protocol import ApiRequest
from openautoglm.sdk.errors import APIResponseError, APITimeoutError

FINISHED_RUN_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _run_path(run_id: str, action: str = "") -> str:
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty string")
    return f"/v1/runs/{quote(run_id, safe='')}" + (f"/{action}" if action else "")


def build_start_run_request(
    workflow: str,
    inputs: Mapping[str, Any] | None,
    *,
    priority: int | None,
    deadline_s: float | None,
    dedupe_key: str | None,
) -> ApiRequest:
    """``POST /v1/workflows/{workflow}/runs``; options left ``None`` take the server's defaults."""
    if not isinstance(workflow, str) or not workflow:
        raise ValueError("workflow must be a non-empty string")
    body: dict[str, Any] = {"inputs": dict(inputs or {})}
    options = {"priority": priority, "deadline_s": deadline_s, "dedupe_key": dedupe_key}
    body |= {name: value for name, value in options.items() if value is not None}
    return ApiRequest("POST", f"/v1/workflows/{quote(workflow, safe='')}/runs", body)


def get_run_request(run_id: str) -> ApiRequest:
    """``GET /v1/runs/{run_id}``: the run with its tasks."""
    return ApiRequest("GET", _run_path(run_id))


def cancel_run_request(run_id: str) -> ApiRequest:
    """``POST /v1/runs/{run_id}/cancel``."""
    return ApiRequest("POST", _run_path(run_id, "cancel"))


def parse_run(body: Mapping[str, Any], request_id: str | None) -> dict[str, Any]:
    """The run object of a reply, as a plain dict."""
    if not isinstance(body.get("id"), str) or not isinstance(body.get("state"), str):
        raise APIResponseError("workflow run answer has no id or state", request_id=request_id)
    return dict(body)


def check_wait(timeout_s: float, poll_s: float) -> None:
    """Refuse waits that could never end or would spin."""
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s}")
    if not (poll_s > 0 and math.isfinite(poll_s)):
        raise ValueError(f"poll_s must be a finite number > 0, got {poll_s}")


def next_poll_s(
    run: Mapping[str, Any], *, left_s: float, poll_s: float, timeout_s: float
) -> float | None:
    """Seconds to wait before asking again; ``None`` when the run has finished.

    ``left_s`` is what remains of the caller's ``timeout_s``; at or below zero the wait is over
    and :class:`APITimeoutError` is raised.
    """
    state = run.get("state")
    if state in FINISHED_RUN_STATES:
        return None
    if left_s <= 0:
        raise APITimeoutError(
            f"workflow run {run.get('id')} is still {state} after {timeout_s:g} s"
        )
    return min(poll_s, left_s)
