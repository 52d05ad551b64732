"""Workflow definitions: the YAML or dict document, validated into frozen specs, and the Python API.

A document is refused whole, before anything runs, when any part is wrong: a
:class:`WorkflowError` (400) names the field in ``param`` (``tasks[2].depends``) and says why.
Invariants of every :class:`WorkflowSpec`: task ids are unique, every dependency names a task,
the graph has no cycle, every template parses, branch targets depend on their branch, and the
workflow's ``defaults`` are already applied to each task (so ``as_document`` has no defaults
block, and ``parse_workflow(spec.as_document()) == spec``). Example::

    name: quarterly-sales
    inputs: {quarter: {type: string}}
    outputs: {summary: "{{ tasks.summarise.output.text }}"}
    defaults: {retry: {max_attempts: 3, delay_s: 10}, timeout_s: 300}
    tasks:
      - {id: fetch, type: http, url: "https://erp/sales?q={{ inputs.quarter }}"}
      - {id: summarise, type: llm, depends: fetch, model: glm-4,
         prompt: "Summarise: {{ tasks.fetch.output }}"}

The keys of each task type are in :data:`~openautoglm.workflows.schema.TASK_FIELDS`; a task's
``retry`` is merged key by key over ``defaults.retry``. An approval does not inherit
``defaults.timeout_s`` (it waits for a person). The same spec can be built in Python
(``workflows/python_api.py``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import yaml

from openautoglm.core.errors import NotFoundError
from openautoglm.workflows import schema
from openautoglm.workflows.graph import check_graph
from openautoglm.workflows.schema import TASK_FIELDS, TASK_TYPES, fail
from openautoglm.workflows.schema import WorkflowError as WorkflowError

Backoff = Literal["fixed", "exponential"]
OnFailure = Literal["fail_run", "continue"]
Trigger = Literal["all_success", "none_failed", "all_done"]
ERROR_CLASSES = ("timeout", "http", "llm", "python", "error")
INPUT_TYPES = ("string", "number", "integer", "boolean", "object", "array")
MAX_TASKS = 10_000
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_TOP_KEYS = ("name", "description", "inputs", "outputs", "max_parallel", "defaults", "tasks")
_COMMON_KEYS = ("id", "type", "depends", "retry", "timeout_s", "on_failure", "trigger")
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failed task is tried again, and how long to wait in between."""

    max_attempts: int = 3
    delay_s: float = 10.0
    backoff: Backoff = "fixed"
    max_delay_s: float = 300.0
    retry_on: tuple[str, ...] = ("error",)

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed."""
        if self.backoff == "fixed":
            return self.delay_s
        # Bounding the exponent keeps 2**n a float that cannot overflow.
        return min(self.delay_s * 2.0 ** min(attempt - 1, 64), self.max_delay_s)

    def should_retry(self, attempt: int, error_class: str) -> bool:
        """Whether to try again after attempt ``attempt`` failed with ``error_class``."""
        retryable = error_class in self.retry_on or "error" in self.retry_on
        return attempt < self.max_attempts and retryable


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One declared input; ``default`` is used when it is not required and not given."""

    name: str
    type: str
    required: bool = True
    default: Any = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task: its dependencies, its type's ``config`` (the type-specific keys), its policies."""

    id: str
    type: str
    depends: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float | None = None
    on_failure: OnFailure = "fail_run"
    trigger: Trigger = "all_success"


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    """A validated workflow; build it with :func:`parse_workflow` or :meth:`Workflow.spec`."""

    name: str
    description: str
    inputs: Mapping[str, InputSpec]
    outputs: Mapping[str, Any]
    tasks: tuple[TaskSpec, ...]
    max_parallel: int | None = None
    _by_id: Mapping[str, TaskSpec] = field(init=False, repr=False, compare=False)
    _dependents: Mapping[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dependents: dict[str, list[str]] = {task.id: [] for task in self.tasks}
        for task in self.tasks:
            for dep in task.depends:
                dependents.setdefault(dep, []).append(task.id)
        object.__setattr__(self, "_by_id", {task.id: task for task in self.tasks})
        object.__setattr__(self, "_dependents", dependents)

    def task(self, task_id: str) -> TaskSpec:
        """The task with this id (:class:`NotFoundError` if there is none)."""
        try:
            return self._by_id[task_id]
        except KeyError:
            raise NotFoundError(f"workflow '{self.name}' has no task '{task_id}'") from None

    def dependents(self, task_id: str) -> list[str]:
        """Ids of the tasks that depend directly on ``task_id``, in declaration order."""
        return list(self._dependents.get(task_id, ()))

    def as_document(self) -> dict[str, Any]:
        """The spec as a plain document, every default spelled out; it parses back to the spec."""
        document: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputs": {name: input_document(spec) for name, spec in self.inputs.items()},
            "outputs": copy.deepcopy(dict(self.outputs)),
        }
        if self.max_parallel is not None:
            document["max_parallel"] = self.max_parallel
        document["tasks"] = [task_document(task) for task in self.tasks]
        return document


def input_document(spec: InputSpec) -> dict[str, Any]:
    document: dict[str, Any] = {"type": spec.type}
    if spec.default is not None:
        document["default"] = copy.deepcopy(spec.default)
    elif not spec.required:
        document["required"] = False
    if spec.description:
        document["description"] = spec.description
    return document


def _retry_document(retry: RetryPolicy) -> dict[str, Any]:
    return {
        "max_attempts": retry.max_attempts,
        "delay_s": retry.delay_s,
        "backoff": retry.backoff,
        "max_delay_s": retry.max_delay_s,
        "retry_on": list(retry.retry_on),
    }


def task_document(task: TaskSpec) -> dict[str, Any]:
    return {
        "id": task.id,
        "type": task.type,
        "depends": list(task.depends),
        **copy.deepcopy(dict(task.config)),
        "retry": _retry_document(task.retry),
        "timeout_s": task.timeout_s,
        "on_failure": task.on_failure,
        "trigger": task.trigger,
    }


def load_workflow(yaml_text: str) -> WorkflowSpec:
    """Parse a YAML definition; syntax errors name their line and column."""
    try:
        document = yaml.safe_load(yaml_text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        fail(f"{where}not valid YAML: {problem}")
    if not isinstance(document, Mapping):
        fail("a workflow document is a mapping with at least 'name' and 'tasks'")
    return parse_workflow(document)


def parse_workflow(document: Mapping[str, Any]) -> WorkflowSpec:
    """Validate a definition document into a :class:`WorkflowSpec`, or raise WorkflowError."""
    schema.refuse_unknown(document, _TOP_KEYS, "the workflow", "")
    name = document.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        fail("'name' must be 1-200 characters of letters, digits, '.', '_' and '-'", "name")
    description = document.get("description") or ""
    if not isinstance(description, str):
        fail("'description' must be a string", "description")
    inputs = schema.mapping(document.get("inputs"), "inputs")
    outputs = schema.mapping(document.get("outputs"), "outputs")
    for key, value in outputs.items():
        schema.check_templates(value, f"output '{key}'", f"outputs.{key}")
    max_parallel = document.get("max_parallel")
    if max_parallel is not None:
        schema.check_count(max_parallel, "'max_parallel'", "max_parallel")
    defaults = schema.mapping(document.get("defaults"), "defaults")
    schema.refuse_unknown(defaults, ("retry", "timeout_s"), "'defaults'", "defaults")
    raw_tasks = document.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        fail("'tasks' must be a non-empty list", "tasks")
    if len(raw_tasks) > MAX_TASKS:
        fail(f"a workflow has at most {MAX_TASKS} tasks, this one has {len(raw_tasks)}", "tasks")
    tasks = tuple(_parse_task(raw, index, defaults) for index, raw in enumerate(raw_tasks))
    check_graph(tasks)
    return WorkflowSpec(
        name=name,
        description=description,
        inputs=MappingProxyType({key: _parse_input(key, raw) for key, raw in inputs.items()}),
        outputs=MappingProxyType(copy.deepcopy(dict(outputs))),
        tasks=tasks,
        max_parallel=max_parallel,
    )


def _parse_input(name: str, raw: Any) -> InputSpec:
    where, label = f"inputs.{name}", f"input '{name}'"
    spec = schema.mapping(raw, where)
    schema.refuse_unknown(spec, ("type", "default", "required", "description"), label, where)
    kind = spec.get("type")
    if kind not in INPUT_TYPES:
        fail(f"{label} needs a type, one of {', '.join(INPUT_TYPES)}", f"{where}.type")
    has_default = "default" in spec
    required = spec.get("required", not has_default)
    if not isinstance(required, bool) or (required and has_default):
        fail(f"{label}: 'required' must be a boolean, false when a default is given", where)
    default = copy.deepcopy(spec.get("default"))
    if default is not None and not schema.is_type(default, kind):
        fail(f"{label}: the default is not of type {kind}", f"{where}.default")
    description = spec.get("description") or ""
    if not isinstance(description, str):
        fail(f"{label}: 'description' must be a string", f"{where}.description")
    return InputSpec(name, kind, required, default, description)


def _parse_task(raw: Any, index: int, defaults: Mapping[str, Any]) -> TaskSpec:
    where = f"tasks[{index}]"
    task = schema.mapping(raw, where)
    task_id = task.get("id")
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        fail(f"{where}: 'id' must be 1-100 letters, digits, '_' and '-'", f"{where}.id")
    kind, label = task.get("type"), f"task '{task_id}'"
    if kind not in TASK_TYPES:
        fail(f"{label}: 'type' must be one of {', '.join(TASK_TYPES)}", f"{where}.type")
    schema.refuse_unknown(task, (*_COMMON_KEYS, *TASK_FIELDS[kind]), f"{label} ({kind})", where)
    depends = schema.task_ids(task.get("depends", []), label, f"{where}.depends")
    retry = {
        **schema.mapping(defaults.get("retry"), "defaults.retry"),
        **schema.mapping(task.get("retry"), f"{where}.retry"),
    }
    if "timeout_s" in task:
        timeout_s = task["timeout_s"]
    else:
        # An approval waits for a person: the workflow-wide timeout is meant for machine work.
        timeout_s = None if kind == "approval" else defaults.get("timeout_s")
    if timeout_s is not None and not (schema.is_type(timeout_s, "number") and timeout_s > 0):
        fail(f"{label}: 'timeout_s' must be a number > 0", f"{where}.timeout_s")
    on_failure = task.get("on_failure", "fail_run")
    if on_failure not in ("fail_run", "continue"):
        fail(f"{label}: 'on_failure' must be fail_run or continue", f"{where}.on_failure")
    trigger = task.get("trigger", "all_success")
    if trigger not in ("all_success", "none_failed", "all_done"):
        fail(f"{label}: 'trigger' must be all_success, none_failed or all_done", f"{where}.trigger")
    return TaskSpec(
        id=task_id,
        type=kind,
        depends=tuple(dict.fromkeys(depends)),
        config=MappingProxyType(schema.task_config(kind, task, label, where)),
        retry=_parse_retry(retry, label, f"{where}.retry"),
        timeout_s=None if timeout_s is None else float(timeout_s),
        on_failure=on_failure,
        trigger=trigger,
    )


def _parse_retry(raw: Mapping[str, Any], label: str, where: str) -> RetryPolicy:
    schema.refuse_unknown(raw, RetryPolicy.__slots__, f"{label}: 'retry'", where)
    attempts = raw.get("max_attempts", 3)
    schema.check_count(attempts, f"{label}: 'max_attempts'", f"{where}.max_attempts")
    for key in ("delay_s", "max_delay_s"):
        if key in raw and not (schema.is_type(raw[key], "number") and raw[key] >= 0):
            fail(f"{label}: '{key}' must be a number >= 0", f"{where}.{key}")
    backoff = raw.get("backoff", "fixed")
    if backoff not in ("fixed", "exponential"):
        fail(f"{label}: 'backoff' must be fixed or exponential", f"{where}.backoff")
    retry_on = raw.get("retry_on", ["error"])
    retry_on = [retry_on] if isinstance(retry_on, str) else retry_on
    if not isinstance(retry_on, list) or not retry_on or not set(retry_on) <= set(ERROR_CLASSES):
        known = ", ".join(ERROR_CLASSES)
        fail(f"{label}: 'retry_on' must list some of {known}", f"{where}.retry_on")
    return RetryPolicy(
        max_attempts=attempts,
        delay_s=float(raw.get("delay_s", 10.0)),
        backoff=backoff,
        max_delay_s=float(raw.get("max_delay_s", 300.0)),
        retry_on=tuple(dict.fromkeys(retry_on)),
    )


def check_inputs(spec: WorkflowSpec, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The run's inputs with defaults filled in; refuses unknown, missing and mistyped ones."""
    for name in inputs:
        if name not in spec.inputs:
            known = ", ".join(spec.inputs) or "none"
            fail(f"unknown input '{name}' ('{spec.name}' takes: {known})", f"inputs.{name}")
    checked: dict[str, Any] = {}
    for name, declared in spec.inputs.items():
        if name not in inputs:
            if declared.required:
                fail(f"input '{name}' is required", f"inputs.{name}")
            checked[name] = copy.deepcopy(declared.default)
            continue
        value = inputs[name]
        if not schema.is_type(value, declared.type) and not (
            value is None and not declared.required
        ):
            got = schema.json_type(value)
            fail(f"input '{name}' must be of type {declared.type}, got {got}", f"inputs.{name}")
        checked[name] = value
    return checked
