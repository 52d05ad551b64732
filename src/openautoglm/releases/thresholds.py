"""Release analysis thresholds: what a candidate must stay within, read from and written to JSON.

Defaults come from the seed: roll back when the error rate over 60 s exceeds 5% (with at least
20 calls) or p99 latency exceeds 1 s. Every invalid value is refused with an
:class:`InvalidRequestError` (``param="thresholds"``) naming the field.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

from openautoglm.core.errors import InvalidRequestError

Metric = Literal["error_rate", "p99_latency_s", "p99_ttft_s", "policy_block_rate"]
Op = Literal[">", ">=", "<", "<="]


RATE_METRICS: frozenset[str] = frozenset({"error_rate", "policy_block_rate"})
METRIC_LABELS: dict[str, str] = {
    "error_rate": "error rate",
    "p99_latency_s": "p99 latency",
    "p99_ttft_s": "p99 time to first token",
    "policy_block_rate": "policy block rate",
}
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def _refuse(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"thresholds: {message}", param="thresholds")


def _check_rate(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise _refuse(f"{name} must be between 0 and 1, got {value}")


def _check_seconds(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise _refuse(f"{name} must be a number of seconds > 0, got {value}")


@dataclass(frozen=True, slots=True)
class CustomThreshold:
    """Fail when ``metric op value`` over ``window_s`` (``None``: the main window)."""

    metric: Metric
    op: Op
    value: float
    window_s: float | None = None

    def __post_init__(self) -> None:
        _check_choice("custom metric", self.metric, METRIC_LABELS)
        _check_choice("custom op", self.op, OPS)
        check = _check_rate if self.metric in RATE_METRICS else _check_seconds
        check(f"custom {self.metric} value", self.value)
        _check_seconds("custom window_s", self.window_s)

    @classmethod
    def from_dict(cls, data: object, where: str = "custom") -> CustomThreshold:
        """Read one custom check from JSON (``where`` names it in errors)."""
        if not isinstance(data, Mapping):
            raise _refuse(f"{where} must be an object, got {data!r}")
        _refuse_unknown_keys(where, data, _field_names(cls))
        missing = [key for key in ("metric", "op", "value") if key not in data]
        if missing:
            raise _refuse(f"{where} is missing {missing}")
        return cls(
            metric=cast(Metric, data["metric"]),
            op=cast(Op, data["op"]),
            value=_number(f"{where}.value", data["value"]),
            window_s=_optional_number(f"{where}.window_s", data.get("window_s")),
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, as :meth:`from_dict` reads it back."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The limits a candidate must stay within; ``None`` switches a check off."""

    max_error_rate: float | None = 0.05
    max_p99_latency_s: float | None = 1.0
    max_p99_ttft_s: float | None = None
    max_policy_block_rate: float | None = None
    window_s: float = 60.0
    min_requests: int = 20
    custom: tuple[CustomThreshold, ...] = ()

    def __post_init__(self) -> None:
        _check_rate("max_error_rate", self.max_error_rate)
        _check_rate("max_policy_block_rate", self.max_policy_block_rate)
        _check_seconds("max_p99_latency_s", self.max_p99_latency_s)
        _check_seconds("max_p99_ttft_s", self.max_p99_ttft_s)
        _check_seconds("window_s", self.window_s)
        if self.min_requests < 1:
            raise _refuse(f"min_requests must be >= 1, got {self.min_requests}")

    @property
    def windows_s(self) -> frozenset[float]:
        """Every window the checks look at (the main one and the custom ones)."""
        return frozenset({self.window_s} | {c.window_s for c in self.custom if c.window_s})

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Thresholds:
        """Read thresholds from JSON; missing keys take the defaults, unknown keys are refused."""
        _refuse_unknown_keys("thresholds", data, _field_names(cls))
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "custom":
                if not isinstance(value, list | tuple):
                    raise _refuse(f"custom must be a list, got {value!r}")
                values[key] = tuple(
                    CustomThreshold.from_dict(item, f"custom[{index}]")
                    for index, item in enumerate(value)
                )
            elif key == "min_requests":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise _refuse(f"min_requests must be an integer, got {value!r}")
                values[key] = value
            elif key == "window_s":
                values[key] = _number(key, value)
            else:
                values[key] = _optional_number(key, value)
        return cls(**values)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, as :meth:`from_dict` reads it back."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return values | {"custom": [c.as_dict() for c in self.custom]}


def _field_names(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _refuse_unknown_keys(where: str, data: Mapping[Any, object], known: frozenset[str]) -> None:
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise _refuse(f"unknown field(s) {unknown} in {where}; known: {sorted(known)}")


def _check_choice(name: str, value: object, choices: Mapping[str, object]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise _refuse(f"{name} must be one of {list(choices)}, got {value!r}")


def _optional_number(name: str, value: object) -> float | None:
    return None if value is None else _number(name, value)


def _number(name: str, value: object) -> float:
    # bool is an int subclass, but `true` is never a meaningful threshold.
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _refuse(f"{name} must be a number, got {value!r}")
    return float(value)
