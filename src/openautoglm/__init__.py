"""Open-AutoGLM: a self-hosted, enterprise LLM engine.

``from openautoglm import GLMClient, AsyncGLMClient`` gives the SDK; the server lives in
``openautoglm.api`` and starts with ``autoglm serve``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openautoglm.core.version import __version__

__all__ = ["AsyncGLMClient", "GLMClient", "__version__"]

if TYPE_CHECKING:
    from openautoglm.sdk import AsyncGLMClient, GLMClient


def __getattr__(name: str) -> Any:
    # The SDK is imported on first use so that importing the server pulls in no client code.
    if name in ("GLMClient", "AsyncGLMClient"):
        from openautoglm import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'openautoglm' has no attribute {name!r}")
