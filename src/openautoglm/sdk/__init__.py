"""Python SDK for the Open-AutoGLM API: :class:`GLMClient`, :class:`AsyncGLMClient` and friends.

The SDK talks to the server over HTTP only and imports nothing else of ``openautoglm``, so it can
ship on its own. Example::

    from openautoglm.sdk import GLMClient

    with GLMClient(api_key="sk-agl-...") as client:
        print(client.generate("Hello").text)
        with client.generate("Tell a story", stream=True) as stream:
            for delta in stream:
                print(delta, end="")
        print(stream.usage)
"""

from openautoglm.sdk.async_client import AsyncGLMClient
from openautoglm.sdk.client import GLMClient
from openautoglm.sdk.errors import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    DeadlineExceededError,
    GLMError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from openautoglm.sdk.retry import RetryPolicy
from openautoglm.sdk.streaming import AsyncGenerationStream, GenerationStream
from openautoglm.sdk.types import ChatResult, Generation, Usage

__all__ = [
    "APIConnectionError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncGLMClient",
    "AsyncGenerationStream",
    "AuthenticationError",
    "BadRequestError",
    "ChatResult",
    "ConfigurationError",
    "ConflictError",
    "DeadlineExceededError",
    "GLMClient",
    "GLMError",
    "Generation",
    "GenerationStream",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
    "Usage",
]
