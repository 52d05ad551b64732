"""The SDK's error tree and the one mapping from a failed call to it.

Every failure the SDK raises is a :class:`GLMError`. An HTTP error answer becomes an
:class:`APIStatusError` subclass chosen by status (and, for 404, by ``code``); an error event inside
a stream is mapped the same way from its ``code``/``type``; failing to reach the server becomes an
:class:`APIConnectionError`. The mapping never fails itself: a body that is not JSON still yields an
error carrying the status and the start of the body as its message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

_MAX_MESSAGE_CHARS = 500


class GLMError(Exception):
    """Base of every error the SDK raises.

    ``status`` is the HTTP status (``None`` when no HTTP answer was involved, or when the error
    arrived inside an already-started stream); ``code``, ``type`` and ``param`` come from the
    server's OpenAI-style error body; ``request_id`` is the server's ``X-Request-Id``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        error_type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = error_type
        self.param = param
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        details = [
            f"{name}={value}"
            for name, value in (
                ("status", self.status),
                ("code", self.code),
                ("request_id", self.request_id),
            )
            if value is not None
        ]
        return f"{self.message} [{', '.join(details)}]" if details else self.message


class ConfigurationError(GLMError, ValueError):
    """The client was configured inconsistently (unknown region, bad URL, both URL and region)."""


class APIConnectionError(GLMError):
    """The server could not be reached, or the connection broke mid-answer."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within ``timeout_s``."""


class APIResponseError(GLMError):
    """The server answered success with a body the SDK cannot read (bad JSON, cut-off stream)."""


class APIStatusError(GLMError):
    """The server answered with an error; subclasses name the common statuses."""


class BadRequestError(APIStatusError):
    """The request is malformed or asks for something unsupported (400)."""


class PayloadTooLargeError(BadRequestError):
    """The request body is over the server's limit (413)."""


class UnprocessableEntityError(BadRequestError):
    """The request failed validation (422)."""


class AuthenticationError(APIStatusError):
    """Missing, unknown, expired or revoked API key (401)."""


class PermissionDeniedError(APIStatusError):
    """The key is valid but may not do this, or a policy blocked the request (403)."""


class NotFoundError(APIStatusError):
    """Unknown object (404)."""


class ModelNotFoundError(NotFoundError):
    """The requested model is not served (404, code ``model_not_found``)."""


class ConflictError(APIStatusError):
    """The object's state does not allow this (409)."""


class RateLimitError(APIStatusError):
    """Over a rate limit, quota or queue capacity (429); see ``retry_after_s``."""


class ServiceUnavailableError(APIStatusError):
    """No healthy instance can take the request now (503); see ``retry_after_s``."""


class DeadlineExceededError(APIStatusError):
    """The request ran past its deadline (504)."""


_CLASS_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: DeadlineExceededError,
}

# Errors inside a stream have no status of their own; the server's codes and types imply one.
_STATUS_BY_CODE: dict[str, int] = {
    "invalid_request": 400,
    "invalid_api_key": 401,
    "permission_denied": 403,
    "not_found": 404,
    "model_not_found": 404,
    "conflict": 409,
    "payload_too_large": 413,
    "rate_limit_exceeded": 429,
    "upstream_error": 502,
    "service_unavailable": 503,
    "deadline_exceeded": 504,
}
_STATUS_BY_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "rate_limit_error": 429,
}


def _class_for(status: int | None, code: str | None) -> type[APIStatusError]:
    if code == "model_not_found":
        return ModelNotFoundError
    if status is None:
        return APIStatusError
    return _CLASS_BY_STATUS.get(status, APIStatusError)


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _error_object(content: bytes) -> Mapping[str, Any] | None:
    """The ``error`` object of an OpenAI-style body, or a stand-in built from other JSON shapes."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    # Frameworks' default bodies, e.g. FastAPI's {"detail": ...} for 422.
    for key in ("message", "detail"):
        if key in data:
            detail = data[key]
            return {"message": detail if isinstance(detail, str) else json.dumps(detail)}
    return None


def _fallback_message(status: int, content: bytes) -> str:
    text = content.decode("utf-8", errors="replace").strip()
    if not text:
        return f"HTTP {status}"
    return text[:_MAX_MESSAGE_CHARS]


def error_from_response(
    status: int,
    content: bytes,
    headers: Mapping[str, str],
    *,
    retry_after_s: float | None = None,
    hint: str = "",
) -> APIStatusError:
    """The error for an HTTP error answer; ``headers`` must look up names case-insensitively.

    ``hint``, when given, is appended to the server's message.
    """
    error = _error_object(content)
    request_id = headers.get("x-request-id")
    if error is None:
        message = _fallback_message(status, content) + hint
        return _class_for(status, None)(
            message, status=status, request_id=request_id, retry_after_s=retry_after_s
        )
    code = _optional_str(error.get("code"))
    message = _optional_str(error.get("message")) or _fallback_message(status, content)
    return _class_for(status, code)(
        message + hint,
        status=status,
        code=code,
        error_type=_optional_str(error.get("type")),
        param=_optional_str(error.get("param")),
        request_id=request_id,
        retry_after_s=retry_after_s,
    )


def error_from_stream_event(event: Mapping[str, Any], request_id: str | None) -> APIStatusError:
    """The error for a ``data: {"error": {...}}`` event that arrived after the stream started."""
    raw = event.get("error")
    error: Mapping[str, Any] = raw if isinstance(raw, dict) else {"message": str(raw)}
    code = _optional_str(error.get("code"))
    error_type = _optional_str(error.get("type"))
    implied_status = _STATUS_BY_CODE.get(code or "") or _STATUS_BY_TYPE.get(error_type or "")
    return _class_for(implied_status, code)(
        _optional_str(error.get("message")) or "error in stream",
        code=code,
        error_type=error_type,
        param=_optional_str(error.get("param")),
        request_id=request_id,
    )


def error_from_transport(
    exc: httpx.TransportError, request_id: str | None = None
) -> APIConnectionError:
    """The error for an httpx transport failure: a timeout or any other connection problem."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out: {exc}", request_id=request_id)
    return APIConnectionError(f"connection failed: {exc}", request_id=request_id)
