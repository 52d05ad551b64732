"""Validation runs: an evaluation set against a version, through the gateway, kept and gated.

:meth:`Validations.start` records a ``running`` run and returns it at once; the run goes on in
the background on this replica (the version's instances are held here while it runs) and its
progress is written every few items, so a CLI or a CI job polls it. At the end the metrics,
per-item results and gate results are stored with a ``validation.finished`` webhook; a run
that passes its gates moves a version in ``development`` to ``pending_approval`` on behalf of
whoever started the run — who therefore cannot also approve it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

from openautoglm.core.clock import Clock
from openautoglm.core.errors import InvalidRequestError, NotFoundError, OpenAutoGLMError
from openautoglm.core.ids import new_object_id
from openautoglm.registry.evaluation import EvalItem, Judge, dataset_digest
from openautoglm.registry.lifecycle import VersionState
from openautoglm.registry.model import OutboxEvent, ValidationRun
from openautoglm.registry.service import RegistryService, actor_of, require_writer
from openautoglm.registry.validation import (
    Asker,
    Gate,
    compare_metrics,
    evaluate_gates,
    gates_passed,
    parse_gates,
    run_evaluation,
)
from openautoglm.tenancy.model import Principal

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5
MAX_CONCURRENCY = 64
AskerFactory = Callable[[Principal, str, str], Asker]
JudgeFactory = Callable[[Principal, str], Judge]
Holder = Callable[[str, str], AbstractAsyncContextManager[None]]


class Validations:
    """Starts, tracks and compares validation runs."""

    def __init__(
        self,
        registry: RegistryService,
        clock: Clock,
        asker: AskerFactory,
        judge: JudgeFactory,
        hold: Holder,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._asker = asker
        self._judge = judge
        self._hold = hold
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(
        self,
        principal: Principal,
        model: str,
        version: str,
        items: Sequence[EvalItem],
        *,
        gates: Mapping[str, str | float] | None = None,
        judge_model: str | None = None,
        concurrency: int = 4,
    ) -> ValidationRun:
        require_writer(principal)
        registered = await self._registry.model(model)
        found = await self._registry.version(model, version)
        if found.state is VersionState.ARCHIVED:
            raise InvalidRequestError(f"{model} version {version} is archived", param="version")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidRequestError(
                f"concurrency must be 1-{MAX_CONCURRENCY}", param="concurrency"
            )
        chosen = parse_gates(gates if gates is not None else registered.gates)
        if any(item.scorer == "judge" for item in items) and judge_model is None:
            raise InvalidRequestError(
                "the dataset has judge items: name a judge_model", param="judge_model"
            )
        run = ValidationRun(
            id=new_object_id("val"),
            model=model,
            version=version,
            status="running",
            dataset_digest=dataset_digest(items),
            total=len(items),
            done=0,
            gates=[gate.as_dict() for gate in chosen],
            created_at=self._clock.now(),
            created_by=principal.key_id,
        )
        await self._registry.store.add_validation(run)
        judge = self._judge(principal, judge_model) if judge_model else None
        task = asyncio.ensure_future(self._run(principal, run, items, chosen, judge, concurrency))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def get(self, run_id: str) -> ValidationRun:
        found = await self._registry.store.get_validation(run_id)
        if found is None:
            raise NotFoundError(f"validation run '{run_id}' not found", code="validation_not_found")
        return found

    async def list(self, model: str, version: str | None = None) -> list[ValidationRun]:
        await self._registry.model(model)
        return await self._registry.store.list_validations(model, version)

    async def compare(self, model: str, versions: Sequence[str]) -> dict[str, Any]:
        """The newest finished run of each version, metric by metric."""
        if len(versions) < 2:
            raise InvalidRequestError("compare at least two versions", param="versions")
        runs: list[ValidationRun] = []
        for version in versions:
            finished = [run for run in await self.list(model, version) if run.metrics is not None]
            if not finished:
                raise NotFoundError(
                    f"{model} version {version} has no finished validation run",
                    code="validation_not_found",
                )
            runs.append(finished[0])
        rows = compare_metrics([(run.version, run.metrics or {}) for run in runs])
        return {
            "model": model,
            "versions": list(versions),
            "runs": [run.id for run in runs],
            "datasets": [run.dataset_digest for run in runs],
            "same_dataset": len({run.dataset_digest for run in runs}) == 1,
            "rows": [row.as_dict() for row in rows],
        }

    async def _run(
        self,
        principal: Principal,
        run: ValidationRun,
        items: Sequence[EvalItem],
        gates: Sequence[Gate],
        judge: Judge | None,
        concurrency: int,
    ) -> None:
        store = self._registry.store
        last_write = time.monotonic()
        progress: dict[str, int] = {"done": 0}
        writes: set[asyncio.Task[None]] = set()

        def on_progress(done: int, _total: int) -> None:
            nonlocal last_write
            progress["done"] = done
            if time.monotonic() - last_write >= PROGRESS_EVERY_S:
                last_write = time.monotonic()
                write = asyncio.ensure_future(store.update_validation(replace(run, done=done), []))
                writes.add(write)
                write.add_done_callback(writes.discard)

        try:
            async with self._hold(run.model, run.version):
                started = time.monotonic()
                outcome = await run_evaluation(
                    items,
                    self._asker(principal, run.model, run.version),
                    judge=judge,
                    concurrency=concurrency,
                    on_progress=on_progress,
                )
                wall_s = time.monotonic() - started
            await asyncio.gather(*writes, return_exceptions=True)
            metrics = {**outcome.metrics, "wall_s": round(wall_s, 6)}
            results = evaluate_gates(gates, metrics)
            passed = gates_passed(results)
            finished = replace(
                run,
                status="passed" if passed else "failed",
                done=len(items),
                metrics=metrics,
                gate_results=[result.as_dict() for result in results],
                results=[result.as_dict() for result in outcome.results],
                finished_at=self._clock.now(),
            )
        except (OpenAutoGLMError, OSError) as exc:
            logger.warning("validation run %s failed: %s", run.id, exc)
            finished = replace(
                run,
                status="error",
                done=progress["done"],
                error=str(exc),
                finished_at=self._clock.now(),
            )
        if finished.status == "passed":  # before the run reads as finished: no stale state
            await self._submit(principal, finished)
        await store.update_validation(
            finished, [OutboxEvent("validation.finished", _event(finished))]
        )
        self._registry.record(
            principal.key_id, "validation.finished", run.model, run.version, _event(finished)
        )

    async def _submit(self, principal: Principal, run: ValidationRun) -> None:
        version = await self._registry.version(run.model, run.version)
        if version.state is not VersionState.DEVELOPMENT:
            return
        try:
            await self._registry.move(
                actor_of(principal),
                run.model,
                run.version,
                VersionState.PENDING_APPROVAL,
                f"validation {run.id} passed its gates",
            )
        except OpenAutoGLMError as exc:
            logger.warning("could not submit %s %s: %s", run.model, run.version, exc)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait(self) -> None:
        """Wait for the runs in progress (tests, shutdown)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _event(run: ValidationRun) -> dict[str, Any]:
    return {
        "run": run.id,
        "model": run.model,
        "version": run.version,
        "status": run.status,
        "metrics": dict(run.metrics) if run.metrics else None,
        "error": run.error,
    }
