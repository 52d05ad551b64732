"""Prometheus metrics of the gateway, with each backend's own numbers folded in at scrape time.

Each app gets its own ``CollectorRegistry`` (no process-global state), exposed at ``/metrics``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openautoglm.core.types import Usage

if TYPE_CHECKING:
    from openautoglm.routing.catalog import Instance, ServedModel

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class _InstanceCollector(Collector):
    """In-flight requests and backend-specific numbers, read when Prometheus scrapes."""

    def __init__(self, instances: Callable[[], Iterable[Instance]]) -> None:
        self._instances = instances

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "autoglm_instance_in_flight", "Requests in progress", labels=["model", "instance"]
        )
        backend = GaugeMetricFamily(
            "autoglm_backend_metric",
            "Numbers a backend reports about itself (llama.cpp slots, tokens, ...)",
            labels=["model", "instance", "name"],
        )
        breaker = GaugeMetricFamily(
            "autoglm_instance_breaker_state",
            "Circuit breaker per instance: 0 closed, 1 half-open, 2 open",
            labels=["model", "instance"],
        )
        for instance in self._instances():
            labels = [instance.model, instance.name]
            in_flight.add_metric(labels, instance.in_flight)
            breaker.add_metric(labels, _BREAKER_VALUES[instance.breaker.state.value])
            for name, value in instance.backend.metrics().items():
                backend.add_metric([*labels, _UNSAFE.sub("_", name)], value)
        yield in_flight
        yield breaker
        yield backend


class _SchedulerCollector(Collector):
    """Each model's queue, slots, refusals and scaling signal, read when Prometheus scrapes."""

    def __init__(self, models: Callable[[], Iterable[ServedModel]]) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        gauges = {
            name: GaugeMetricFamily(f"autoglm_scheduler_{name}", text, labels=["model"])
            for name, text in (
                ("queue_depth", "Requests waiting for a slot"),
                ("slots_in_use", "Slots held by requests"),
                ("slots", "Slots (the instances' combined max_concurrency)"),
                ("estimated_wait_seconds", "Expected wait of a request arriving now"),
                ("service_seconds", "Moving average of how long a request holds a slot"),
                ("desired_replicas", "Replicas that would keep the wait near the target"),
            )
        }
        rejected = CounterMetricFamily(
            "autoglm_scheduler_rejected",
            "Requests refused by admission control",
            labels=["model", "reason"],
        )
        wait = GaugeMetricFamily(
            "autoglm_scheduler_wait_p99_seconds",
            "p99 queue wait of recent requests",
            labels=["model", "priority"],
        )
        for model in self._models():
            scheduler = model.scheduler
            if scheduler is None:
                continue
            stats = scheduler.stats()
            label = [model.name]
            gauges["queue_depth"].add_metric(label, stats.depth)
            gauges["slots_in_use"].add_metric(label, stats.in_flight)
            gauges["slots"].add_metric(label, stats.capacity)
            gauges["estimated_wait_seconds"].add_metric(label, stats.estimated_wait_s)
            gauges["service_seconds"].add_metric(label, stats.service_s)
            gauges["desired_replicas"].add_metric(label, model.desired_replicas())
            for reason, count in stats.rejected.items():
                rejected.add_metric([model.name, str(reason)], count)
            for priority, summary in stats.waits.items():
                if summary.count:
                    wait.add_metric([model.name, str(priority)], summary.p99_s)
        yield from gauges.values()
        yield rejected
        yield wait


class GatewayMetrics:
    """Counters and histograms the gateway records for each finished request."""

    def __init__(
        self,
        instances: Callable[[], Iterable[Instance]],
        models: Callable[[], Iterable[ServedModel]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "autoglm_requests",
            "Model requests by outcome (ok or an error code)",
            ["model", "instance", "outcome"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "autoglm_request_duration_seconds",
            "Time from routing to the last chunk",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._tokens = Counter(
            "autoglm_tokens", "Tokens processed", ["model", "kind"], registry=self.registry
        )
        self._retries = Counter(
            "autoglm_retries",
            "Calls retried on another instance before their first byte, by failure",
            ["model", "reason"],
            registry=self.registry,
        )
        self._stages = Histogram(
            "autoglm_stage_duration_seconds",
            "Time spent in each pipeline stage (auth, policy_input, queue, route, context, "
            "limits, first_token, generate, policy_output, ...)",
            ["stage"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._first_token = Histogram(
            "autoglm_time_to_first_token_seconds",
            "From calling the backend to its first chunk",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._token_rate = Histogram(
            "autoglm_completion_tokens_per_second",
            "Completion tokens per second of generation, per call",
            ["model"],
            buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
            registry=self.registry,
        )
        self._stage_children: dict[str, Any] = {}
        self._fallbacks = Counter(
            "autoglm_fallbacks",
            "Calls moved to a fallback model",
            ["model", "fallback"],
            registry=self.registry,
        )
        self._version_requests = Counter(
            "autoglm_version_requests",
            "Requests to registry model versions by outcome (ok or an error code)",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self._version_latency = Histogram(
            "autoglm_version_request_duration_seconds",
            "Time from routing to the last chunk, per registry model version",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_InstanceCollector(instances))
        if models is not None:
            self.registry.register(_SchedulerCollector(models))
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}

    def observe(
        self, instance: Instance, outcome: str, duration_s: float, usage: Usage | None
    ) -> None:
        """Record one finished (or failed, or cancelled) request."""
        key = (instance.model, instance.name, outcome)
        children = self._children.get(key)
        if children is None:  # label lookups cost microseconds: resolve each series once
            children = self._children[key] = (
                self._requests.labels(*key),
                self._latency.labels(instance.model),
                self._tokens.labels(instance.model, "prompt"),
                self._tokens.labels(instance.model, "completion"),
            )
        requests, latency, prompt_tokens, completion_tokens = children
        requests.inc()
        latency.observe(duration_s)
        if instance.version is not None:
            self._version_requests.labels(instance.model, instance.version, outcome).inc()
            self._version_latency.labels(instance.model, instance.version).observe(duration_s)
        if usage is not None:
            prompt_tokens.inc(usage.prompt_tokens)
            completion_tokens.inc(usage.completion_tokens)

    def observe_stages(
        self, model: str | None, stages: Mapping[str, float], completion_tokens: int | None
    ) -> None:
        """A finished request's stage durations (ms), time to first token and token rate."""
        children = self._stage_children
        for stage, ms in stages.items():
            child = children.get(stage)
            if child is None:
                child = children[stage] = self._stages.labels(stage)
            child.observe(ms / 1000.0)
        if model is None:
            return
        first_ms = stages.get("first_token")
        if first_ms is not None:
            self._first_token.labels(model).observe(first_ms / 1000.0)
        generate_ms = stages.get("generate")
        if completion_tokens and generate_ms:
            self._token_rate.labels(model).observe(completion_tokens / (generate_ms / 1000.0))

    def retried(self, model: str, reason: str) -> None:
        self._retries.labels(model, reason).inc()

    def fallback(self, model: str, fallback: str) -> None:
        self._fallbacks.labels(model, fallback).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
