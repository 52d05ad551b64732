"""Workflows in Python, as in the seed: a :class:`Workflow` of :class:`Task` objects with an
``id``, ``depends`` and an ``execute`` callable (or the ``@workflow.task`` decorator). Each
function becomes a ``python`` task named ``"module:qualname"`` that a worker re-imports after a
restart, so it must live in a module the server can import; :meth:`Workflow.spec` validates the
whole like a YAML document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from openautoglm.workflows import schema
from openautoglm.workflows.definition import (
    InputSpec,
    OnFailure,
    RetryPolicy,
    TaskSpec,
    Trigger,
    WorkflowSpec,
    input_document,
    parse_workflow,
    task_document,
)
from openautoglm.workflows.schema import WorkflowError, fail

_F = TypeVar("_F", bound=Callable[..., Any])
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class Task:
    """A Python task of a :class:`Workflow`: ``execute(ctx)``, sync or async, after ``depends``."""

    id: str
    execute: Callable[..., Any]
    depends: Sequence[str] | str = ()
    retry: RetryPolicy = DEFAULT_RETRY
    timeout_s: float | None = None
    on_failure: OnFailure = "fail_run"
    trigger: Trigger = "all_success"


class Workflow:
    """A workflow written in Python; :meth:`spec` validates it like a YAML document.

    ``inputs`` maps names to :class:`InputSpec` or to their document form (``{"type": ...}``).
    """

    def __init__(
        self,
        name: str,
        tasks: Iterable[Task] = (),
        *,
        inputs: Mapping[str, InputSpec | Mapping[str, Any]] | None = None,
        outputs: Mapping[str, Any] | None = None,
        description: str = "",
        max_parallel: int | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.inputs = dict(inputs or {})
        self.outputs = dict(outputs or {})
        self.max_parallel = max_parallel
        self._tasks = list(tasks)

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks added so far, in order."""
        return tuple(self._tasks)

    def add(self, task: Task) -> Task:
        """Add a task; ids and dependencies are checked by :meth:`spec`."""
        self._tasks.append(task)
        return task

    def task(
        self,
        task_id: str | None = None,
        *,
        depends: Sequence[str] | str = (),
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout_s: float | None = None,
        on_failure: OnFailure = "fail_run",
        trigger: Trigger = "all_success",
    ) -> Callable[[_F], _F]:
        """Decorator adding the function as a task (its id defaults to the function's name)."""

        def register(function: _F) -> _F:
            task_name = task_id or function.__name__
            self.add(Task(task_name, function, depends, retry, timeout_s, on_failure, trigger))
            # The function itself is returned so that it stays importable by its own name.
            return function

        return register

    def spec(self) -> WorkflowSpec:
        """The validated :class:`WorkflowSpec`; raises WorkflowError like :func:`parse_workflow`."""
        tasks = []
        for index, task in enumerate(self._tasks):
            try:
                config = {"callable": schema.callable_path(task.execute)}
            except WorkflowError as exc:
                fail(f"task '{task.id}': {exc.message}", f"tasks[{index}].callable")
            depends = (task.depends,) if isinstance(task.depends, str) else tuple(task.depends)
            python = TaskSpec(task.id, "python", depends, config, task.retry, task.timeout_s)
            tasks.append(
                task_document(python) | {"on_failure": task.on_failure, "trigger": task.trigger}
            )
        inputs = {
            name: input_document(value) if isinstance(value, InputSpec) else value
            for name, value in self.inputs.items()
        }
        document: dict[str, Any] = {"name": self.name, "description": self.description}
        document |= {"inputs": inputs, "outputs": self.outputs, "tasks": tasks}
        document["max_parallel"] = self.max_parallel
        return parse_workflow(document)
