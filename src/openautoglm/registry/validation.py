"""Running an evaluation set against a model version, its metrics, quality gates and comparison.

Pure logic: the model is reached through an :class:`Asker` and graded (for ``judge`` items)
through a :class:`~openautoglm.registry.evaluation.Judge`, both passed in; nothing here reads a
clock, so the caller times the whole run.

Invariants: :func:`run_evaluation` never has more than ``concurrency`` items in flight, returns
one :class:`ItemResult` per item in dataset order, and calls ``on_progress(done, total)`` exactly
once per item with ``done`` counting up from 1. A failure of one item (an error reply, an
exception from the asker or the judge) fails that item only; cancellation still propagates.

Metrics (always exactly :data:`METRICS`): ``accuracy``, ``error_rate`` and ``policy_hit_rate``
are fractions of all items; latency, TTFT and ``tokens_per_s`` cover answered items only (a
reply without an error), and are 0.0 when none was answered. ``tokens_per_s`` is the sum of
completion tokens over the sum of latencies — the decode speed one request sees, not the
throughput of the run. Percentiles are nearest-rank (see :func:`percentile`).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, TypeGuard, get_args

from openautoglm.core.errors import InvalidRequestError, OpenAutoGLMError
from openautoglm.registry.evaluation import EvalItem, Judge, Score, score

METRICS = (
    "items", "accuracy", "error_rate", "policy_hit_rate", "p50_latency_s", "p99_latency_s",
    "p50_ttft_s", "p99_ttft_s", "tokens_per_s",
)  # fmt: skip
"""Every metric an evaluation yields, in the order comparisons list them."""

HIGHER_IS_BETTER = frozenset({"accuracy", "tokens_per_s"})
"""Metrics where more is better; ``items`` is a count, not a quality, so it is in neither set."""
LOWER_IS_BETTER = frozenset(METRICS) - HIGHER_IS_BETTER - {"items"}
_FRACTIONS = frozenset({"accuracy", "error_rate", "policy_hit_rate"})

GateOp = Literal[">=", "<=", ">", "<"]
_OPS: dict[GateOp, Callable[[float, float], bool]] = {
    ">=": lambda value, threshold: value >= threshold,
    "<=": lambda value, threshold: value <= threshold,
    ">": lambda value, threshold: value > threshold,
    "<": lambda value, threshold: value < threshold,
}
_OP_NAMES: dict[str, GateOp] = {op: op for op in get_args(GateOp)}
_GATE = re.compile(r"^\s*(>=|<=|>|<)?\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Reply:
    """What the model version answered to one item; an ``error_code`` means no answer."""

    text: str
    latency_s: float
    ttft_s: float | None
    completion_tokens: int
    policy_hit: bool
    error_code: str | None = None


class Asker(Protocol):
    """Sends one item to the model version under test."""

    async def __call__(self, item: EvalItem) -> Reply: ...


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one item; ``answer`` is None exactly when no answer came back."""

    id: str
    passed: bool
    detail: str | None
    answer: str | None
    latency_s: float
    ttft_s: float | None
    completion_tokens: int
    policy_hit: bool
    error_code: str | None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class EvaluationOutcome:
    """Metrics over the whole set and the per-item results, in dataset order."""

    metrics: dict[str, float]
    results: list[ItemResult]


async def run_evaluation(
    items: Sequence[EvalItem],
    ask: Asker,
    *,
    judge: Judge | None,
    concurrency: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvaluationOutcome:
    """Ask every item with at most ``concurrency`` in flight, score the answers, sum them up.

    Refuses up front (nothing is asked) a ``concurrency`` below 1, and a dataset with ``judge``
    items when no judge is given.
    """
    if concurrency < 1:
        raise InvalidRequestError("concurrency must be at least 1", param="concurrency")
    if judge is None and any(item.scorer == "judge" for item in items):
        raise InvalidRequestError(
            "the dataset has items scored by 'judge', so it needs a judge model",
            param="judge_model",
        )
    slots = asyncio.Semaphore(concurrency)
    results: list[ItemResult | None] = [None] * len(items)
    done = 0

    async def run_one(index: int, item: EvalItem) -> None:
        nonlocal done
        async with slots:
            try:
                results[index] = await _evaluate_item(item, ask, judge)
            except asyncio.CancelledError:
                # A CancelledError raised by the asker or judge on its own would make the
                # TaskGroup drop this item silently; only a cancellation of the run may pass.
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    raise
                failed = _failed_reply("internal_error")
                results[index] = _result(item, failed, Score(False, "cancelled"), answer=None)
        done += 1
        if on_progress is not None:
            on_progress(done, len(items))

    async with asyncio.TaskGroup() as group:
        for index, item in enumerate(items):
            group.create_task(run_one(index, item))
    finished = [result for result in results if result is not None]
    return EvaluationOutcome(metrics=compute_metrics(finished), results=finished)


async def _evaluate_item(item: EvalItem, ask: Asker, judge: Judge | None) -> ItemResult:
    try:
        reply = await ask(item)
    except OpenAutoGLMError as exc:
        reply = _failed_reply(exc.code)
    except Exception:
        # One broken item must not sink a run of thousands; it is recorded, not swallowed.
        reply = _failed_reply("internal_error")
    if reply.error_code is not None:
        return _result(item, reply, Score(False, f"no answer: {reply.error_code}"), answer=None)
    if item.scorer != "judge":
        return _result(item, reply, score(item, reply.text), answer=reply.text)
    assert judge is not None  # run_evaluation refuses judge items without a judge
    try:
        verdict = await judge(item, reply.text)
    except Exception as exc:
        detail = f"judge failed: {exc.code if isinstance(exc, OpenAutoGLMError) else 'error'}"
        return _result(item, reply, Score(False, detail), answer=reply.text, error="judge_error")
    return _result(item, reply, verdict, answer=reply.text)


def _failed_reply(code: str) -> Reply:
    return Reply("", 0.0, None, 0, policy_hit=False, error_code=code)


def _result(
    item: EvalItem, reply: Reply, verdict: Score, *, answer: str | None, error: str | None = None
) -> ItemResult:
    return ItemResult(
        id=item.id,
        passed=verdict.passed,
        detail=verdict.detail,
        answer=answer,
        latency_s=reply.latency_s,
        ttft_s=reply.ttft_s,
        completion_tokens=reply.completion_tokens,
        policy_hit=reply.policy_hit,
        error_code=error or reply.error_code,
    )


# -- metrics -----------------------------------------------------------------------------------


def compute_metrics(results: Sequence[ItemResult]) -> dict[str, float]:
    """The :data:`METRICS` of a set of results (all 0.0 for no results)."""
    total = len(results)
    answered = [r for r in results if r.answer is not None]
    latencies = [r.latency_s for r in answered]
    ttfts = [r.ttft_s for r in answered if r.ttft_s is not None]
    busy_s = sum(latencies)
    return {
        "items": float(total),
        "accuracy": _fraction(sum(r.passed for r in results), total),
        "error_rate": _fraction(sum(r.error_code is not None for r in results), total),
        "policy_hit_rate": _fraction(sum(r.policy_hit for r in results), total),
        "p50_latency_s": percentile(latencies, 50) if latencies else 0.0,
        "p99_latency_s": percentile(latencies, 99) if latencies else 0.0,
        "p50_ttft_s": percentile(ttfts, 50) if ttfts else 0.0,
        "p99_ttft_s": percentile(ttfts, 99) if ttfts else 0.0,
        "tokens_per_s": sum(r.completion_tokens for r in answered) / busy_s if busy_s > 0 else 0.0,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 ≤ q ≤ 100): always one of ``values``.

    It is the smallest value with at least ``q`` percent of values at or below it, so p50 of
    ``[1, 2, 3, 4]`` is 2 and p99 of fewer than 100 values is the maximum. Raises ValueError for
    no values or ``q`` out of range.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _fraction(count: int, total: int) -> float:
    return count / total if total else 0.0


# -- gates -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """A bound a metric must meet for a version to pass validation, e.g. ``accuracy >= 0.8``."""

    metric: str
    op: GateOp
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        """The gate as JSON-ready data."""
        return {"metric": self.metric, "op": self.op, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gate:
        """Read back :meth:`as_dict`, checking it as :func:`parse_gates` would."""
        op, threshold = data.get("op"), data.get("threshold")
        if op not in _OPS or not _is_number(threshold):
            raise InvalidRequestError(f"not a stored gate: {dict(data)!r}", param="gates")
        return _checked_gate(str(data.get("metric")), op, float(threshold))


@dataclass(frozen=True)
class GateResult:
    """One gate checked against a run's metrics; ``value`` is None if the metric was missing."""

    metric: str
    op: GateOp
    threshold: float
    value: float | None
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return asdict(self)


def parse_gates(spec: Mapping[str, str | float]) -> list[Gate]:
    """Parse ``{"accuracy": ">= 0.8", "p99_latency_s": 2.5}`` into gates.

    A value is an operator (``>=``, ``<=``, ``>``, ``<``) and a number, or a bare number meaning
    ``>=`` for accuracy, tokens_per_s and items, and ``<=`` for the rest. Rates (accuracy,
    error_rate, policy_hit_rate) are fractions, so their thresholds must lie in 0..1.
    """
    gates: list[Gate] = []
    for metric, value in spec.items():
        if _is_number(value):
            op, threshold = _default_op(metric), float(value)
        elif isinstance(value, str) and (match := _GATE.match(value)):
            op = _OP_NAMES[match.group(1)] if match.group(1) else _default_op(metric)
            threshold = float(match.group(2))
        else:
            raise InvalidRequestError(
                f"gate {metric!r}: {value!r} is not like '>= 0.8' (operators: >=, <=, >, <)",
                param="gates",
            )
        gates.append(_checked_gate(metric, op, threshold))
    return gates


def _default_op(metric: str) -> GateOp:
    return ">=" if metric in HIGHER_IS_BETTER or metric == "items" else "<="


def _checked_gate(metric: str, op: GateOp, threshold: float) -> Gate:
    if metric not in METRICS:
        raise InvalidRequestError(
            f"gate on unknown metric {metric!r} (allowed: {', '.join(METRICS)})", param="gates"
        )
    if not math.isfinite(threshold):
        raise InvalidRequestError(f"gate {metric!r}: threshold must be finite", param="gates")
    if metric in _FRACTIONS and not 0 <= threshold <= 1:
        raise InvalidRequestError(
            f"gate {metric!r}: {threshold} is not a fraction in 0..1 (80% is 0.8)", param="gates"
        )
    return Gate(metric, op, threshold)


def evaluate_gates(gates: Sequence[Gate], metrics: Mapping[str, float]) -> list[GateResult]:
    """Check each gate; a metric that is missing or NaN fails its gate."""
    results: list[GateResult] = []
    for gate in gates:
        value = metrics.get(gate.metric)
        passed = value is not None and _OPS[gate.op](value, gate.threshold)
        results.append(GateResult(gate.metric, gate.op, gate.threshold, value, passed))
    return results


def gates_passed(results: Sequence[GateResult]) -> bool:
    """True when every gate passed (and so when there are none)."""
    return all(result.passed for result in results)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- comparison --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonRow:
    """One metric across runs; ``best`` indexes the best value (first on ties), if ranked."""

    metric: str
    values: list[float | None]
    best: int | None

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return asdict(self)


def compare_metrics(runs: Sequence[tuple[str, Mapping[str, float]]]) -> list[ComparisonRow]:
    """Line up runs' metrics, one row per metric in :data:`METRICS` order.

    ``values[i]`` belongs to ``runs[i]`` (None where that run lacks the metric). ``best`` is
    None when fewer than two runs have a value, when they are all equal, and always for
    ``items``, which is not ranked.
    """
    rows: list[ComparisonRow] = []
    for metric in METRICS:
        values = [metrics.get(metric) for _, metrics in runs]
        ranked = [(i, v) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
        best: int | None = None
        if len(ranked) >= 2 and metric != "items" and len({v for _, v in ranked}) > 1:
            pick = max if metric in HIGHER_IS_BETTER else min
            best = pick(ranked, key=lambda pair: pair[1])[0]
        rows.append(ComparisonRow(metric, values, best))
    return rows
