"""What one attempt of a task sees (:class:`TaskContext`), how it reports failure
(:class:`TaskFailure`), and the gateway port ``llm`` tasks call (:class:`LlmCaller`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


def _no_log(line: str) -> None:
    del line


@dataclass(frozen=True)
class TaskContext:
    """What one attempt of a task knows: its run, its inputs and its dependencies' outputs.

    ``upstream`` maps a task id to that task's output; ``item`` and ``index`` are set inside a
    ``map``; ``deadline`` is on the ``time.monotonic`` clock; ``log`` appends a line to the
    task's log.
    """

    run_id: str
    task_id: str
    attempt: int
    idempotency_key: str
    inputs: Mapping[str, Any]
    upstream: Mapping[str, Any]
    item: Any = None
    index: int | None = None
    deadline: float | None = None
    log: Callable[[str], None] = field(default=_no_log, compare=False, repr=False)

    def variables(self) -> dict[str, Any]:
        """The names a task's templates can use."""
        return {
            "inputs": dict(self.inputs),
            "tasks": TaskOutputs(self.upstream),
            "item": self.item,
            "index": self.index,
            "run": {"id": self.run_id},
        }


class TaskOutputs(Mapping[str, Mapping[str, Any]]):
    """``tasks.<id>.output`` for templates, read on demand: a run of thousands of tasks does
    not copy every output for every task."""

    def __init__(self, outputs: Mapping[str, Any]) -> None:
        self._outputs = outputs

    def __getitem__(self, task_id: str) -> Mapping[str, Any]:
        return {"output": self._outputs[task_id]}

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)


class TaskFailure(Exception):
    """One attempt failed; ``retryable`` says whether another attempt could succeed.

    ``error_class`` is one of ``timeout``, ``http``, ``llm``, ``python``, ``template``, ``error``.
    """

    def __init__(self, message: str, error_class: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.error_class = error_class
        self.retryable = retryable


class LlmCaller(Protocol):
    """The gateway as ``llm`` tasks see it; wired by the service layer.

    Returns ``{"text": str, "usage": {...}, "model": str, "version": str | None}``; raises
    :class:`OpenAutoGLMError` when the gateway refuses or fails.
    """

    async def __call__(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None,
        temperature: float | None,
        idempotency_key: str,
    ) -> Mapping[str, Any]: ...
