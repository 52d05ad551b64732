"""Per-version sliding-window metrics and the canary verdict drawn from them.

Every finished request of a versioned model leaves a :class:`Sample`; :class:`VersionTraffic` keeps
them per ``(model, version)`` in one :class:`VersionWindow` and answers :class:`WindowStats` for any
window up to the retention asked for so far. :func:`analyse` compares stats with
:class:`Thresholds` and returns a :class:`Verdict`.

Invariants: a window holds at most ``max_samples`` samples (the oldest are dropped first) and none
older than its retention once it has been pruned; recording is O(1) amortised, stats are O(n).
A verdict is ``inconclusive`` below ``min_requests``, ``fail`` when any threshold is crossed (each
breach a sentence with the measured value, the limit and the window), else ``pass``.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from openautoglm.releases.thresholds import (
    METRIC_LABELS,
    OPS,
    RATE_METRICS,
    CustomThreshold,
    Metric,
    Op,
    Thresholds,
)

VerdictStatus = Literal["pass", "fail", "inconclusive"]

MIN_RETENTION_S = 60.0
MAX_SAMPLES = 100_000


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished request of one version.

    ``failed`` is an instance failure (backend error, timeout, unavailable), not a client error;
    ``shadow`` marks a mirrored copy whose answer was never sent to the client.
    """

    at: float
    failed: bool
    latency_s: float
    ttft_s: float | None
    policy_blocked: bool
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What one version did over the last ``window_s`` seconds.

    Rates are 0.0 when there were no requests; percentiles are ``None`` when no request succeeded
    (or, for TTFT, none reported one).
    """

    window_s: float
    requests: int
    failures: int
    error_rate: float
    p99_latency_s: float | None
    p99_ttft_s: float | None
    policy_block_rate: float
    shadow_requests: int = 0

    @classmethod
    def empty(cls, window_s: float) -> WindowStats:
        """Stats of a window that saw nothing."""
        return cls(window_s, 0, 0, 0.0, None, None, 0.0)

    def metric(self, name: Metric) -> float | None:
        """The value of one named metric."""
        value: float | None = getattr(self, name)
        return value


def p99(values: list[float]) -> float | None:
    """The 99th percentile by nearest rank (``None`` for no values)."""
    if not values:
        return None
    rank = -(-99 * len(values) // 100)  # ceil(0.99 n) without float rounding
    # nlargest over the top 1% costs O(n log k) instead of sorting all n values.
    return heapq.nlargest(len(values) - rank + 1, values)[-1]


class VersionWindow:
    """The recent samples of one version, retained for ``window_s`` seconds."""

    def __init__(self, window_s: float, max_samples: int = MAX_SAMPLES) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._samples: deque[Sample] = deque(maxlen=max_samples)

    def __len__(self) -> int:
        return len(self._samples)

    def retain(self, window_s: float) -> None:
        """Keep samples for at least ``window_s`` seconds from now on (retention never shrinks)."""
        self.window_s = max(self.window_s, window_s)

    def record(self, sample: Sample) -> None:
        """Add one sample; the deque's ``maxlen`` drops the oldest beyond the memory cap."""
        self._prune(sample.at)
        self._samples.append(sample)

    def stats(self, now: float, window_s: float | None = None) -> WindowStats:
        """Stats over samples with ``at > now - window_s`` (default: the whole retention)."""
        span_s = self.window_s if window_s is None else window_s
        if span_s <= 0 or span_s > self.window_s:
            raise ValueError(f"window_s must be in (0, {self.window_s}], got {span_s}")
        self._prune(now)
        cutoff = now - span_s
        requests = failures = blocked = shadows = 0
        latencies: list[float] = []
        ttfts: list[float] = []
        for sample in self._samples:
            if sample.at <= cutoff:
                continue
            requests += 1
            blocked += sample.policy_blocked
            shadows += sample.shadow
            if sample.failed:
                failures += 1
                continue
            latencies.append(sample.latency_s)
            if sample.ttft_s is not None:
                ttfts.append(sample.ttft_s)
        if not requests:
            return WindowStats.empty(span_s)
        return WindowStats(
            window_s=span_s,
            requests=requests,
            failures=failures,
            error_rate=failures / requests,
            p99_latency_s=p99(latencies),
            p99_ttft_s=p99(ttfts),
            policy_block_rate=blocked / requests,
            shadow_requests=shadows,
        )

    def _prune(self, now: float) -> None:
        cutoff = now - self.window_s
        samples = self._samples
        while samples and samples[0].at <= cutoff:
            samples.popleft()


class VersionTraffic:
    """Windows of samples keyed by ``(model, version)``, stored once per version.

    Retention is the longest window asked for so far (at least ``min_retention_s``); a longer window
    asked later only sees what the shorter retention had kept, so callers that know their windows
    up front declare them with :meth:`retain`.
    """

    def __init__(
        self, min_retention_s: float = MIN_RETENTION_S, max_samples: int = MAX_SAMPLES
    ) -> None:
        self._retention_s = min_retention_s
        self._max_samples = max_samples
        self._windows: dict[tuple[str, str], VersionWindow] = {}

    def record(self, model: str, version: str, sample: Sample) -> None:
        """Add one finished request of ``model``/``version``."""
        self._window(model, version).record(sample)

    def retain(self, model: str, version: str, window_s: float) -> None:
        """Make sure ``window_s`` seconds of this version's samples are kept from now on."""
        self._retention_s = max(self._retention_s, window_s)
        self._window(model, version).retain(window_s)

    def stats(self, model: str, version: str, now: float, window_s: float) -> WindowStats:
        """Stats of ``model``/``version`` over the last ``window_s`` seconds before ``now``."""
        window = self._windows.get((model, version))
        if window is None:
            return WindowStats.empty(window_s)
        if window_s > window.window_s:
            self.retain(model, version, window_s)
        return window.stats(now, window_s)

    def forget(self, model: str, version: str) -> None:
        """Drop everything kept for this version (release finished or version removed)."""
        self._windows.pop((model, version), None)

    def _window(self, model: str, version: str) -> VersionWindow:
        key = (model, version)
        window = self._windows.get(key)
        if window is None:
            window = VersionWindow(self._retention_s, self._max_samples)
            self._windows[key] = window
        return window


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one analysis; ``breaches`` explains a ``fail``."""

    status: VerdictStatus
    breaches: list[str] = field(default_factory=list)


def analyse(stats: WindowStats, thresholds: Thresholds) -> Verdict:
    """Judge one window: the built-in limits plus the custom checks that use the main window.

    Custom checks with a window of their own need their own stats: see :func:`analyse_version`.
    """
    if stats.requests < thresholds.min_requests:
        return Verdict("inconclusive")
    limits: list[tuple[Metric, float | None]] = [
        ("error_rate", thresholds.max_error_rate),
        ("p99_latency_s", thresholds.max_p99_latency_s),
        ("p99_ttft_s", thresholds.max_p99_ttft_s),
        ("policy_block_rate", thresholds.max_policy_block_rate),
    ]
    breaches = [
        breach
        for metric, limit in limits
        if limit is not None
        for breach in [_breach(stats, metric, ">", limit)]
        if breach
    ]
    for custom in thresholds.custom:
        if custom.window_s is None or custom.window_s == stats.window_s:
            breaches += _custom_breaches(stats, custom)
    return Verdict("fail", breaches) if breaches else Verdict("pass")


def analyse_version(
    traffic: VersionTraffic, model: str, version: str, now: float, thresholds: Thresholds
) -> Verdict:
    """Judge a version over the main window and each custom check's own window.

    Any breach fails; otherwise the main window decides between ``pass`` and ``inconclusive``. A
    custom window with fewer than ``min_requests`` requests is not judged yet.
    """
    for window_s in thresholds.windows_s:
        traffic.retain(model, version, window_s)
    verdict = analyse(traffic.stats(model, version, now, thresholds.window_s), thresholds)
    breaches = list(verdict.breaches)
    for custom in thresholds.custom:
        if custom.window_s is None or custom.window_s == thresholds.window_s:
            continue
        stats = traffic.stats(model, version, now, custom.window_s)
        if stats.requests >= thresholds.min_requests:
            breaches += _custom_breaches(stats, custom)
    if breaches:
        return Verdict("fail", breaches)
    return verdict


def _custom_breaches(stats: WindowStats, custom: CustomThreshold) -> list[str]:
    breach = _breach(stats, custom.metric, custom.op, custom.value)
    return [breach] if breach else []


def _breach(stats: WindowStats, metric: Metric, op: Op, limit: float) -> str | None:
    measured = stats.metric(metric)
    if measured is None or not OPS[op](measured, limit):
        return None
    show = _percent if metric in RATE_METRICS else _seconds
    return (
        f"{METRIC_LABELS[metric]} {show(measured)} {op} {show(limit)}"
        f" over {_seconds(stats.window_s, digits=None)} ({stats.requests} requests)"
    )


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _seconds(value: float, digits: int | None = 3) -> str:
    if digits is None:
        return f"{value:g} s"
    return f"{value:.{digits}f} s"


def release_report(
    traffic: VersionTraffic,
    model: str,
    stable: str,
    candidate: str,
    thresholds: Thresholds,
    now: float,
) -> dict[str, Any]:
    """Both versions' window stats and the candidate's verdict, as the releases API shows them."""
    report: dict[str, Any] = {}
    for role, version in (("stable", stable), ("candidate", candidate)):
        stats = traffic.stats(model, version, now, thresholds.window_s)
        report[role] = {"version": version, **asdict(stats)}
    verdict = analyse_version(traffic, model, candidate, now, thresholds)
    report["verdict"] = {"status": verdict.status, "breaches": list(verdict.breaches)}
    return report
