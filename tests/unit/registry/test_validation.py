"""Validation runs: bounded concurrency, order, progress, failures, metrics, gates, comparison."""

from __future__ import annotations

import asyncio
import math

import pytest

from openautoglm.core.errors import InvalidRequestError, RateLimitError
from openautoglm.registry.evaluation import EvalItem, Score, parse_items
from openautoglm.registry.validation import (
    METRICS,
    ComparisonRow,
    Gate,
    GateResult,
    ItemResult,
    Reply,
    compare_metrics,
    compute_metrics,
    evaluate_gates,
    gates_passed,
    parse_gates,
    percentile,
    run_evaluation,
)


def exact_items(count: int) -> list[EvalItem]:
    return parse_items([{"prompt": f"echo {i}", "expected": str(i)} for i in range(count)])


def reply(text: str, latency_s: float = 1.0, **kwargs: object) -> Reply:
    fields: dict[str, object] = {"ttft_s": None, "completion_tokens": 0, "policy_hit": False}
    fields.update(kwargs)
    return Reply(text=text, latency_s=latency_s, **fields)  # type: ignore[arg-type]


class EchoAsker:
    """Answers each item's number after yielding a number of times, tracking how many overlap."""

    def __init__(self, yields_for: dict[str, int] | None = None) -> None:
        self.yields_for = yields_for or {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.finished: list[str] = []

    async def __call__(self, item: EvalItem) -> Reply:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        for _ in range(self.yields_for.get(item.id, 1)):
            await asyncio.sleep(0)
        self.in_flight -= 1
        self.finished.append(item.id)
        assert item.prompt is not None
        return reply(item.prompt.removeprefix("echo "))


# -- running -----------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3, 8])
async def test_concurrency_bound_is_respected_and_reached(concurrency: int) -> None:
    ask = EchoAsker()
    outcome = await run_evaluation(exact_items(20), ask, judge=None, concurrency=concurrency)
    assert ask.max_in_flight == concurrency
    assert outcome.metrics["accuracy"] == 1.0


async def test_results_keep_dataset_order_and_progress_counts_up() -> None:
    items = exact_items(6)
    # Later items finish first, so completion order is the reverse of dataset order.
    ask = EchoAsker({item.id: 10 * (6 - position) for position, item in enumerate(items)})
    progress: list[tuple[int, int]] = []
    outcome = await run_evaluation(
        items,
        ask,
        judge=None,
        concurrency=6,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert ask.finished == ["6", "5", "4", "3", "2", "1"]
    assert [result.id for result in outcome.results] == ["1", "2", "3", "4", "5", "6"]
    assert [result.answer for result in outcome.results] == ["0", "1", "2", "3", "4", "5"]
    assert progress == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]


async def test_error_replies_and_exceptions_fail_only_their_item() -> None:
    items = exact_items(4)

    async def ask(item: EvalItem) -> Reply:
        if item.id == "2":
            return reply("", error_code="upstream_error")
        if item.id == "3":
            raise RuntimeError("boom")
        if item.id == "4":
            raise RateLimitError("slow down")
        return reply("0", latency_s=2.0, completion_tokens=10)

    outcome = await run_evaluation(items, ask, judge=None)
    first, upstream, crashed, limited = outcome.results
    assert first == ItemResult("1", True, None, "0", 2.0, None, 10, False, None)
    assert (upstream.passed, upstream.answer, upstream.error_code) == (
        False,
        None,
        "upstream_error",
    )
    assert upstream.detail == "no answer: upstream_error"
    assert (crashed.passed, crashed.answer, crashed.error_code) == (False, None, "internal_error")
    assert limited.error_code == "rate_limit_exceeded"
    assert outcome.metrics["accuracy"] == 0.25
    assert outcome.metrics["error_rate"] == 0.75
    # Latency and speed cover the one answered item only.
    assert outcome.metrics["p99_latency_s"] == 2.0
    assert outcome.metrics["tokens_per_s"] == 5.0


async def test_cancelling_the_run_cancels_it() -> None:
    started = asyncio.Event()

    async def ask(item: EvalItem) -> Reply:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    run = asyncio.create_task(run_evaluation(exact_items(3), ask, judge=None))
    await asyncio.wait_for(started.wait(), timeout=1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def test_a_stray_cancelled_error_from_the_asker_fails_only_its_item() -> None:
    async def ask(item: EvalItem) -> Reply:
        if item.id == "1":
            raise asyncio.CancelledError
        return reply("1")

    outcome = await run_evaluation(exact_items(2), ask, judge=None)
    assert [(r.id, r.passed, r.detail, r.error_code) for r in outcome.results] == [
        ("1", False, "cancelled", "internal_error"),
        ("2", True, None, None),
    ]


async def test_judge_items_need_a_judge_before_anything_runs() -> None:
    items = parse_items(
        [{"prompt": "a", "expected": "x"}, {"prompt": "b", "expected": "crit", "scorer": "judge"}]
    )
    ask = EchoAsker()
    with pytest.raises(InvalidRequestError, match="needs a judge model") as caught:
        await run_evaluation(items, ask, judge=None)
    assert caught.value.param == "judge_model"
    assert ask.finished == []


async def test_judge_grades_judge_items_and_its_failures_are_recorded() -> None:
    items = parse_items(
        [
            {"id": "ok", "prompt": "p", "expected": "polite", "scorer": "judge"},
            {"id": "bad", "prompt": "p", "expected": "polite", "scorer": "judge"},
            {"id": "broken", "prompt": "p", "expected": "polite", "scorer": "judge"},
            {"id": "local", "prompt": "p", "expected": "hi"},
        ]
    )
    judged: list[tuple[str, str]] = []

    async def judge(item: EvalItem, answer: str) -> Score:
        judged.append((item.id, answer))
        if item.id == "broken":
            raise ValueError("judge model down")
        return Score(item.id == "ok", "because")

    async def ask(item: EvalItem) -> Reply:
        return reply("hi")

    outcome = await run_evaluation(items, ask, judge=judge)
    assert sorted(judged) == [("bad", "hi"), ("broken", "hi"), ("ok", "hi")]
    ok, bad, broken, local = outcome.results
    assert (ok.passed, ok.detail) == (True, "because")
    assert (bad.passed, bad.error_code) == (False, None)
    assert (broken.passed, broken.detail, broken.error_code) == (
        False,
        "judge failed: error",
        "judge_error",
    )
    assert broken.answer == "hi"
    assert local.passed
    assert outcome.metrics["error_rate"] == 0.25


async def test_concurrency_below_one_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await run_evaluation(exact_items(1), EchoAsker(), judge=None, concurrency=0)
    assert caught.value.param == "concurrency"


# -- metrics -----------------------------------------------------------------------------------


def result(**kwargs: object) -> ItemResult:
    fields: dict[str, object] = {
        "id": "x", "passed": True, "detail": None, "answer": "a", "latency_s": 1.0, "ttft_s": None,
        "completion_tokens": 0, "policy_hit": False, "error_code": None,
    }  # fmt: skip
    fields.update(kwargs)
    return ItemResult(**fields)  # type: ignore[arg-type]


def test_metrics_on_known_results() -> None:
    results = [
        result(latency_s=1.0, ttft_s=0.1, completion_tokens=10),
        result(latency_s=2.0, ttft_s=0.2, completion_tokens=30, passed=False),
        result(latency_s=3.0, ttft_s=None, completion_tokens=20, policy_hit=True),
        result(latency_s=0.0, answer=None, passed=False, error_code="upstream_error"),
    ]
    metrics = compute_metrics(results)
    assert list(metrics) == list(METRICS)
    assert metrics == {
        "items": 4.0,
        "accuracy": 0.5,
        "error_rate": 0.25,
        "policy_hit_rate": 0.25,
        "p50_latency_s": 2.0,
        "p99_latency_s": 3.0,
        "p50_ttft_s": 0.1,
        "p99_ttft_s": 0.2,
        "tokens_per_s": 10.0,
    }


def test_metrics_when_nothing_was_answered() -> None:
    metrics = compute_metrics([result(answer=None, passed=False, error_code="internal_error")])
    assert metrics["error_rate"] == 1.0
    assert [metrics[name] for name in ("p50_latency_s", "p99_ttft_s", "tokens_per_s")] == [
        0.0,
        0.0,
        0.0,
    ]
    assert compute_metrics([]) == dict.fromkeys(METRICS, 0.0)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([4.0, 1.0, 3.0, 2.0], 75, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 99, 4.0),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([5.0], 50, 5.0),
        ([float(i) for i in range(1, 101)], 99, 99.0),
        ([float(i) for i in range(1, 201)], 99, 198.0),
        ([float(i) for i in range(1, 11)], 50, 5.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_refuses_nothing_and_out_of_range_q() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


# -- gates -------------------------------------------------------------------------------------


def test_parse_gates_reads_operators_and_bare_numbers() -> None:
    gates = parse_gates(
        {
            "accuracy": ">= 0.8",
            "error_rate": "<0.05",
            "tokens_per_s": 10,
            "p99_latency_s": 2.5,
            "p50_ttft_s": " > 0 ",
            "policy_hit_rate": "<=1",
            "items": "100",
        }
    )
    assert gates == [
        Gate("accuracy", ">=", 0.8),
        Gate("error_rate", "<", 0.05),
        Gate("tokens_per_s", ">=", 10.0),
        Gate("p99_latency_s", "<=", 2.5),
        Gate("p50_ttft_s", ">", 0.0),
        Gate("policy_hit_rate", "<=", 1.0),
        Gate("items", ">=", 100.0),
    ]
    assert parse_gates({}) == []


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"wall_s": "<= 10"}, ["unknown metric 'wall_s'", "accuracy", "tokens_per_s"]),
        ({"accuracy": "== 0.8"}, ["'accuracy'", ">=, <=, >, <"]),
        ({"accuracy": "=> 0.8"}, ["'accuracy'"]),
        ({"accuracy": ">= "}, ["'accuracy'"]),
        ({"accuracy": ">= 0.8 and < 1"}, ["'accuracy'"]),
        ({"accuracy": 80}, ["not a fraction", "0.8"]),
        ({"error_rate": "< -0.1"}, ["not a fraction"]),
        ({"accuracy": True}, ["'accuracy'"]),
        ({"p99_latency_s": float("inf")}, ["finite"]),
    ],
)
def test_parse_gates_refusals(spec: dict[str, str | float], words: list[str]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_gates(spec)
    assert caught.value.param == "gates"
    for word in words:
        assert word in caught.value.message


def test_evaluate_gates_edges() -> None:
    gates = parse_gates(
        {"accuracy": ">= 0.8", "error_rate": "< 0.05", "p99_latency_s": "> 1", "tokens_per_s": 5}
    )
    metrics = {"accuracy": 0.8, "error_rate": 0.05, "p99_latency_s": math.nan}
    results = evaluate_gates(gates, metrics)
    assert results == [
        GateResult("accuracy", ">=", 0.8, 0.8, True),
        GateResult("error_rate", "<", 0.05, 0.05, False),
        GateResult("p99_latency_s", ">", 1.0, results[2].value, False),
        GateResult("tokens_per_s", ">=", 5.0, None, False),
    ]
    assert not gates_passed(results)
    assert gates_passed(results[:1])
    assert gates_passed([])


def test_gates_round_trip_through_dicts() -> None:
    gate = Gate("p99_latency_s", "<", 2.0)
    assert gate.as_dict() == {"metric": "p99_latency_s", "op": "<", "threshold": 2.0}
    assert Gate.from_dict(gate.as_dict()) == gate
    checked = GateResult("accuracy", ">=", 0.8, 0.9, True)
    assert checked.as_dict() == {
        "metric": "accuracy",
        "op": ">=",
        "threshold": 0.8,
        "value": 0.9,
        "passed": True,
    }
    for stored in (
        {"metric": "accuracy", "op": "!=", "threshold": 1},
        {"metric": "nope", "op": "<", "threshold": 1},
    ):
        with pytest.raises(InvalidRequestError):
            Gate.from_dict(stored)


# -- comparison --------------------------------------------------------------------------------


def test_compare_metrics_picks_best_per_direction() -> None:
    base = dict.fromkeys(METRICS, 1.0)
    runs = [
        ("v1", base | {"accuracy": 0.7, "p99_latency_s": 2.0, "tokens_per_s": 40.0, "items": 10.0}),
        ("v2", base | {"accuracy": 0.9, "p99_latency_s": 3.0, "tokens_per_s": 30.0, "items": 20.0}),
        ("v3", {"accuracy": 0.9, "p99_latency_s": 1.5}),
    ]
    rows = {row.metric: row for row in compare_metrics(runs)}
    assert list(rows) == list(METRICS)
    assert rows["accuracy"] == ComparisonRow("accuracy", [0.7, 0.9, 0.9], 1)  # first on ties
    assert rows["p99_latency_s"].best == 2
    assert rows["tokens_per_s"] == ComparisonRow("tokens_per_s", [40.0, 30.0, None], 0)
    assert rows["items"].best is None
    assert rows["error_rate"].best is None  # all equal: nothing to prefer


def test_compare_metrics_needs_two_values_to_rank() -> None:
    rows = compare_metrics([("only", {"accuracy": 0.5})])
    assert rows[1] == ComparisonRow("accuracy", [0.5], None)
    assert compare_metrics([("a", {"accuracy": 0.5}), ("b", {})])[1].best is None
    assert compare_metrics([])[0].as_dict() == {"metric": "items", "values": [], "best": None}
