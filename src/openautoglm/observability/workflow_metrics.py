"""Prometheus metrics of the workflow engine, on the app's registry.

Task latency, outcomes and throughput are counted as tasks finish; the ready queue, the tasks
running and the queue wait are read from the executor when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from openautoglm.workflows.executor import Executor
    from openautoglm.workflows.model import Run, TaskRun

_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)


class _ExecutorCollector(Collector):
    def __init__(self) -> None:
        self.executor: Executor | None = None

    def collect(self) -> Iterator[Metric]:
        executor = self.executor
        if executor is None:
            return
        ready = GaugeMetricFamily("autoglm_workflow_ready_tasks", "Tasks waiting for a worker")
        ready.add_metric([], executor.ready_count)
        running = GaugeMetricFamily("autoglm_workflow_running_tasks", "Tasks running now")
        running.add_metric([], executor.running_count)
        runs = GaugeMetricFamily("autoglm_workflow_active_runs", "Unfinished runs held here")
        runs.add_metric([], executor.active_runs)
        yield ready
        yield running
        yield runs


class WorkflowMetrics:
    """Counters and histograms of workflow tasks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._tasks = Counter(
            "autoglm_workflow_tasks",
            "Finished workflow tasks by outcome",
            ["workflow", "state"],
            registry=registry,
        )
        self._duration = Histogram(
            "autoglm_workflow_task_duration_seconds",
            "Time a task attempt took, by workflow",
            ["workflow"],
            buckets=_BUCKETS_S,
            registry=registry,
        )
        self._wait = Histogram(
            "autoglm_workflow_queue_wait_seconds",
            "Time a ready task waited for a worker",
            buckets=_BUCKETS_S,
            registry=registry,
        )
        self._collector = _ExecutorCollector()
        registry.register(self._collector)

    def watch(self, executor: Executor) -> None:
        self._collector.executor = executor
        executor.on_wait = self._wait.observe

    def task_finished(self, run: Run, task: TaskRun, duration_s: float | None) -> None:
        self._tasks.labels(run.workflow, task.state.value).inc()
        if duration_s is not None:
            self._duration.labels(run.workflow).observe(duration_s)
