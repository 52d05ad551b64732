"""Helpers for tests of in-process model backends (the demo model, loaded once per module)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from openautoglm.core.types import GenerationRequest, Message, SamplingParams

Test = TypeVar("Test", bound=Callable[..., Awaitable[None]])


def model_test(test: Test) -> Test:
    """A test on the module's shared model: the module's event loop, marked slow."""
    marked: Test = pytest.mark.slow(pytest.mark.asyncio(loop_scope="module")(test))
    return marked


def chat(text: str, **params: object) -> GenerationRequest:
    """A one-message chat request to the test model with these sampling parameters."""
    return GenerationRequest(
        request_id="r",
        model="smollm2",
        kind="chat",
        messages=(Message(role="user", content=text),),
        params=SamplingParams(**params),  # type: ignore[arg-type]
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)
