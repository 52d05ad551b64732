"""Sliding-window metrics per version, thresholds and the verdicts drawn from them."""

from __future__ import annotations

import json

import pytest

from openautoglm.core.clock import ManualClock
from openautoglm.core.errors import InvalidRequestError
from openautoglm.releases.analysis import (
    Sample,
    Verdict,
    VersionTraffic,
    VersionWindow,
    WindowStats,
    analyse,
    analyse_version,
    p99,
)
from openautoglm.releases.thresholds import CustomThreshold, Thresholds


def ok(at: float, latency_s: float = 0.1, ttft_s: float | None = None) -> Sample:
    return Sample(at=at, failed=False, latency_s=latency_s, ttft_s=ttft_s, policy_blocked=False)


def failed(at: float, latency_s: float = 5.0) -> Sample:
    return Sample(at=at, failed=True, latency_s=latency_s, ttft_s=None, policy_blocked=False)


def stats(**overrides: object) -> WindowStats:
    values: dict[str, object] = {
        "window_s": 60.0,
        "requests": 50,
        "failures": 0,
        "error_rate": 0.0,
        "p99_latency_s": 0.2,
        "p99_ttft_s": 0.05,
        "policy_block_rate": 0.0,
    }
    values.update(overrides)
    return WindowStats(**values)  # type: ignore[arg-type]


# -- percentiles and windows -------------------------------------------------------------------


def test_p99_is_the_nearest_rank() -> None:
    assert p99([]) is None
    assert p99([3.0]) == 3.0
    assert p99([float(v) for v in range(1, 101)]) == 99.0
    assert p99([float(v) for v in range(1000, 0, -1)]) == 990.0
    assert p99([float(v) for v in range(1, 201)]) == 198.0
    assert p99([1.0, 2.0, 3.0]) == 3.0


def test_stats_count_requests_failures_and_rates() -> None:
    window = VersionWindow(60.0)
    for i in range(40):
        window.record(ok(at=i * 0.1, latency_s=0.01 * (i + 1), ttft_s=0.001 * (i + 1)))
    for i in range(10):
        window.record(failed(at=4.0 + i * 0.1))
    blocked = Sample(at=5.0, failed=False, latency_s=0.0, ttft_s=None, policy_blocked=True)
    window.record(blocked)
    window.record(
        Sample(5.0, failed=False, latency_s=0.2, ttft_s=None, policy_blocked=False, shadow=True)
    )

    result = window.stats(now=6.0)
    assert result.requests == 52
    assert result.failures == 10
    assert result.error_rate == pytest.approx(10 / 52)
    assert result.policy_block_rate == pytest.approx(1 / 52)
    assert result.shadow_requests == 1
    # 42 successes (the 40 plus the blocked and the shadow one): nearest rank 42 is the largest.
    assert result.p99_latency_s == pytest.approx(0.40)
    assert result.p99_ttft_s == pytest.approx(0.040)
    assert result.window_s == 60.0


def test_failed_requests_are_left_out_of_latency() -> None:
    window = VersionWindow(60.0)
    window.record(failed(at=1.0, latency_s=30.0))
    assert window.stats(now=2.0).p99_latency_s is None
    window.record(ok(at=1.5, latency_s=0.3))
    assert window.stats(now=2.0).p99_latency_s == 0.3


def test_empty_window_has_zero_rates_and_no_percentiles() -> None:
    assert VersionWindow(60.0).stats(now=100.0) == WindowStats(60.0, 0, 0, 0.0, None, None, 0.0)


def test_old_samples_are_pruned_as_the_clock_moves() -> None:
    clock = ManualClock()
    window = VersionWindow(10.0)
    for _ in range(5):
        window.record(failed(clock.monotonic()))
        clock.advance(1.0)
    for _ in range(5):
        window.record(ok(clock.monotonic()))
        clock.advance(1.0)
    # now = 10: samples at 0..9 are all inside (at > 0 excludes only at == 0).
    assert window.stats(clock.monotonic()).requests == 9
    clock.advance(5.0)  # now = 15: only the successes at 6..9 are left
    result = window.stats(clock.monotonic())
    assert (result.requests, result.failures, result.error_rate) == (4, 0, 0.0)
    assert len(window) == 4
    clock.advance(100.0)
    assert window.stats(clock.monotonic()).requests == 0
    assert len(window) == 0


def test_memory_is_capped_by_dropping_the_oldest() -> None:
    window = VersionWindow(3600.0, max_samples=1000)
    for i in range(500):
        window.record(failed(at=i * 0.001))
    for i in range(1000):
        window.record(ok(at=1.0 + i * 0.001))
    assert len(window) == 1000
    result = window.stats(now=3.0)
    assert (result.requests, result.failures) == (1000, 0)


def test_default_cap_is_one_hundred_thousand() -> None:
    window = VersionWindow(3600.0)
    for i in range(100_010):
        window.record(ok(at=i * 0.001))
    assert len(window) == 100_000


def test_a_shorter_window_sees_only_its_own_span() -> None:
    window = VersionWindow(300.0)
    for second in range(300):
        window.record(failed(second) if second < 240 else ok(second))
    assert window.stats(now=300.0, window_s=60.0).requests == 59  # 241..299
    assert window.stats(now=300.0, window_s=60.0).error_rate == 0.0
    assert window.stats(now=300.0).requests == 299
    with pytest.raises(ValueError):
        window.stats(now=300.0, window_s=301.0)


# -- the registry of windows ---------------------------------------------------------------------


def test_traffic_keeps_versions_apart_and_forgets_them() -> None:
    traffic = VersionTraffic()
    traffic.record("glm", "1", ok(1.0))
    traffic.record("glm", "2", failed(1.0))
    traffic.record("other", "1", ok(1.0))
    assert traffic.stats("glm", "1", 2.0, 60.0).failures == 0
    assert traffic.stats("glm", "2", 2.0, 60.0).failures == 1
    assert traffic.stats("glm", "3", 2.0, 60.0) == WindowStats.empty(60.0)
    traffic.forget("glm", "2")
    assert traffic.stats("glm", "2", 2.0, 60.0).requests == 0
    assert traffic.stats("other", "1", 2.0, 60.0).requests == 1


def test_traffic_retains_at_least_sixty_seconds_and_grows_with_longer_windows() -> None:
    traffic = VersionTraffic()
    for second in range(200):
        traffic.record("glm", "2", ok(float(second)))
    # Retention was 60 s while recording, so older samples are gone.
    assert traffic.stats("glm", "2", 200.0, 300.0).requests == 60
    for second in range(200, 400):
        traffic.record("glm", "2", ok(float(second)))
    assert traffic.stats("glm", "2", 400.0, 300.0).requests == 260  # 140..399 kept
    assert traffic.stats("glm", "2", 400.0, 10.0).requests == 9
    # New versions start with the longest retention asked for so far.
    for second in range(400):
        traffic.record("glm", "3", ok(float(second)))
    assert traffic.stats("glm", "3", 400.0, 300.0).requests == 299


def test_retain_declared_up_front_keeps_the_long_window() -> None:
    traffic = VersionTraffic()
    traffic.retain("glm", "2", 600.0)
    for second in range(600):
        traffic.record("glm", "2", ok(float(second)))
    assert traffic.stats("glm", "2", 600.0, 600.0).requests == 599
    assert traffic.stats("glm", "2", 600.0, 60.0).requests == 59


# -- thresholds ----------------------------------------------------------------------------------


def test_thresholds_round_trip_through_json() -> None:
    thresholds = Thresholds(
        max_error_rate=0.1,
        max_p99_latency_s=None,
        max_p99_ttft_s=0.5,
        max_policy_block_rate=0.2,
        window_s=120.0,
        min_requests=5,
        custom=(CustomThreshold("error_rate", ">=", 0.02, 600.0),),
    )
    data = json.loads(json.dumps(thresholds.as_dict()))
    assert Thresholds.from_dict(data) == thresholds
    assert data["custom"] == [
        {"metric": "error_rate", "op": ">=", "value": 0.02, "window_s": 600.0}
    ]


def test_missing_keys_take_the_defaults() -> None:
    assert Thresholds.from_dict({}) == Thresholds()
    assert Thresholds.from_dict({"max_error_rate": 0}).max_error_rate == 0.0
    assert Thresholds.from_dict({"max_p99_latency_s": None}).max_p99_latency_s is None


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"max_eror_rate": 0.1}, "max_eror_rate"),
        ({"max_error_rate": 1.5}, "max_error_rate"),
        ({"max_error_rate": -0.1}, "max_error_rate"),
        ({"max_policy_block_rate": 2}, "max_policy_block_rate"),
        ({"max_p99_latency_s": 0}, "max_p99_latency_s"),
        ({"max_p99_ttft_s": -1.0}, "max_p99_ttft_s"),
        ({"window_s": 0}, "window_s"),
        ({"window_s": None}, "window_s"),
        ({"min_requests": 0}, "min_requests"),
        ({"min_requests": 2.5}, "min_requests"),
        ({"max_error_rate": "high"}, "max_error_rate"),
        ({"max_error_rate": True}, "max_error_rate"),
        ({"custom": {"metric": "error_rate"}}, "custom"),
        ({"custom": [{"metric": "qps", "op": ">", "value": 1}]}, "metric"),
        ({"custom": [{"metric": "error_rate", "op": "!=", "value": 0.1}]}, "op"),
        ({"custom": [{"metric": "error_rate", "op": ">", "value": 3}]}, "error_rate value"),
        ({"custom": [{"metric": "p99_latency_s", "op": ">", "value": 0}]}, "p99_latency_s"),
        ({"custom": [{"metric": "error_rate", "op": ">"}]}, "value"),
        ({"custom": [{"metric": "error_rate", "op": ">", "value": 0.1, "when": 1}]}, "when"),
        (
            {"custom": [{"metric": "error_rate", "op": ">", "value": 0.1, "window_s": 0}]},
            "window_s",
        ),
    ],
)
def test_bad_thresholds_are_refused_naming_the_field(data: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Thresholds.from_dict(data)
    assert caught.value.param == "thresholds"
    assert named in caught.value.message


# -- verdicts ------------------------------------------------------------------------------------


def test_too_few_requests_is_inconclusive() -> None:
    verdict = analyse(stats(requests=19, failures=19, error_rate=1.0), Thresholds())
    assert verdict == Verdict("inconclusive", [])


def test_within_limits_passes() -> None:
    assert analyse(stats(requests=20), Thresholds()) == Verdict("pass", [])


def test_each_crossed_limit_is_a_readable_breach() -> None:
    thresholds = Thresholds(max_p99_ttft_s=0.5, max_policy_block_rate=0.1)
    measured = stats(
        failures=10,
        error_rate=0.2,
        p99_latency_s=1.5,
        p99_ttft_s=0.75,
        policy_block_rate=0.12,
    )
    assert analyse(measured, thresholds) == Verdict(
        "fail",
        [
            "error rate 20.0% > 5.0% over 60 s (50 requests)",
            "p99 latency 1.500 s > 1.000 s over 60 s (50 requests)",
            "p99 time to first token 0.750 s > 0.500 s over 60 s (50 requests)",
            "policy block rate 12.0% > 10.0% over 60 s (50 requests)",
        ],
    )


def test_a_limit_is_crossed_only_above_it_and_off_when_none() -> None:
    at_limit = stats(error_rate=0.05, p99_latency_s=1.0)
    assert analyse(at_limit, Thresholds()).status == "pass"
    off = Thresholds(max_error_rate=None, max_p99_latency_s=None)
    assert analyse(stats(error_rate=0.9, p99_latency_s=9.0), off).status == "pass"
    assert analyse(stats(p99_latency_s=None, p99_ttft_s=None), Thresholds()).status == "pass"


def test_custom_thresholds_on_the_main_window() -> None:
    thresholds = Thresholds(custom=(CustomThreshold("p99_latency_s", ">=", 0.2),))
    assert analyse(stats(p99_latency_s=0.2), thresholds) == Verdict(
        "fail", ["p99 latency 0.200 s >= 0.200 s over 60 s (50 requests)"]
    )
    assert analyse(stats(p99_latency_s=0.19), thresholds).status == "pass"


def test_analyse_version_uses_each_custom_window() -> None:
    clock = ManualClock()
    traffic = VersionTraffic()
    thresholds = Thresholds(
        min_requests=10,
        custom=(CustomThreshold("error_rate", ">", 0.1, window_s=300.0),),
    )
    assert analyse_version(traffic, "glm", "2", 0.0, thresholds).status == "inconclusive"
    # Four minutes of failures, then a clean last minute: the main window passes, the long fails.
    for second in range(300):
        sample = failed(float(second)) if second < 240 else ok(float(second))
        traffic.record("glm", "2", sample)
    clock.advance(300.0)
    verdict = analyse_version(traffic, "glm", "2", clock.monotonic(), thresholds)
    assert verdict == Verdict("fail", ["error rate 79.9% > 10.0% over 300 s (299 requests)"])
    assert analyse(traffic.stats("glm", "2", 300.0, 60.0), thresholds).status == "pass"


def test_analyse_version_skips_a_custom_window_with_too_few_requests() -> None:
    traffic = VersionTraffic()
    thresholds = Thresholds(custom=(CustomThreshold("error_rate", ">", 0.0, window_s=5.0),))
    for second in range(60):
        traffic.record("glm", "2", failed(float(second)) if second == 58 else ok(float(second)))
    verdict = analyse_version(traffic, "glm", "2", 60.0, thresholds)
    # 5 s window has 4 requests (< 20), so its check waits; the main window passes (1/59 < 5%).
    assert verdict == Verdict("pass", [])
