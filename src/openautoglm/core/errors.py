"""One error tree for the whole engine.

Every failure that reaches a client is an :class:`OpenAutoGLMError` carrying an HTTP status, an
OpenAI-style ``type`` and a machine-readable ``code``. Exactly one place (``api.errors``) turns it
into a response; nothing else in the package knows about HTTP.
"""

from __future__ import annotations


class OpenAutoGLMError(Exception):
    """Base of all errors that are answered to a client."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequestError(OpenAutoGLMError):
    """The request is malformed or asks for something unsupported (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(OpenAutoGLMError):
    """Missing, unknown, expired or revoked API key (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(OpenAutoGLMError):
    """The caller is known but may not do this (403)."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFoundError(OpenAutoGLMError):
    """Unknown object, or one that belongs to another tenant (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """The requested model is not served here (404)."""

    code = "model_not_found"


class ConflictError(OpenAutoGLMError):
    """The object's state does not allow this (409)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLargeError(OpenAutoGLMError):
    """Request body over the configured limit (413)."""

    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimitError(OpenAutoGLMError):
    """Over a rate limit, quota or capacity (429)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(OpenAutoGLMError):
    """An upstream model server failed or answered garbage (502)."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class ServiceUnavailableError(OpenAutoGLMError):
    """No healthy instance can take the request now (503)."""

    status = 503
    type = "server_error"
    code = "service_unavailable"


class DeadlineExceededError(OpenAutoGLMError):
    """The request ran past its deadline or the upstream timed out (504)."""

    status = 504
    type = "server_error"
    code = "deadline_exceeded"


class BackendFailure(OpenAutoGLMError):
    """A backend failed while generating (500); ``echo`` raises it for injected faults."""

    status = 500
    type = "server_error"
    code = "backend_error"
