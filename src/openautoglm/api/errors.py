"""The one place that turns errors into HTTP answers with OpenAI's error body.

``{"error": {"message", "type", "code", "param"}}`` with the error's status; 429 and 503 carry
``Retry-After`` when known. Validation errors name the offending field in ``param``.
"""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from openautoglm.core.errors import InvalidRequestError, OpenAutoGLMError
from openautoglm.limits.checks import RateLimitExceeded
from openautoglm.limits.headers import ratelimit_headers

logger = logging.getLogger(__name__)

_STATUS_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


_TYPE_TAGS = frozenset({"str", "int", "float", "bool"})


def error_payload(exc: OpenAutoGLMError) -> dict[str, object]:
    """The OpenAI-style error object for ``exc`` (also sent as an SSE event mid-stream)."""
    error: dict[str, object] = {
        "message": exc.message,
        "type": exc.type,
        "code": exc.code,
        "param": exc.param,
    }
    rule_id = getattr(exc, "rule_id", None)
    if rule_id is not None:
        error["rule"] = rule_id  # the rule that refused; never what it matched
    return {"error": error}


def error_response(exc: OpenAutoGLMError) -> Response:
    headers = {}
    if isinstance(exc, RateLimitExceeded):
        headers.update(ratelimit_headers(exc.limit_status))
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return Response(
        orjson.dumps(error_payload(exc)),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )


def validation_error(exc: ValidationError | RequestValidationError) -> InvalidRequestError:
    """A 400 naming the first offending field, as OpenAI does."""
    errors = exc.errors()
    if not errors:
        return InvalidRequestError("invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request: "
            f"{first.get('ctx', {}).get('error', 'invalid JSON')}",
            code="invalid_json",
        )
    if first.get("type") == "model_attributes_type" and tuple(first.get("loc", ())) == ("body",):
        return InvalidRequestError(
            "The request body must be a JSON object, sent with 'Content-Type: application/json'.",
            code="invalid_body",
        )
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    # Union branches add their type name to the location; a reader wants the field path.
    location = [part for part in location if "[" not in part and part not in _TYPE_TAGS]
    param = ".".join(location) or None
    where = f"'{param}'" if param else "the request body"
    extra = f" ({len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return InvalidRequestError(
        f"Invalid value for {where}: {first.get('msg', 'invalid')}{extra}",
        code="missing_required_parameter" if first.get("type") == "missing" else "invalid_value",
        param=param,
    )


def response_for(exc: Exception, request: Request) -> Response:
    """The error answer for any exception a handler raised (noted on the request's trace)."""
    response = _response_for(exc, request)
    trace = request.scope.get("state", {}).get("trace")
    if trace is not None:
        trace.error_code = _code_of(exc, response)
        if trace.version is not None:  # a registry version failed: say which one
            response.headers["X-AutoGLM-Version"] = trace.version
    return response


def _code_of(exc: Exception, response: Response) -> str:
    if isinstance(exc, OpenAutoGLMError):
        return exc.code
    if isinstance(exc, (ValidationError, RequestValidationError)):
        return validation_error(exc).code
    return _STATUS_TYPES.get(response.status_code, ("", "server_error"))[1]


def _response_for(exc: Exception, request: Request) -> Response:
    if isinstance(exc, OpenAutoGLMError):
        return error_response(exc)
    if isinstance(exc, (ValidationError, RequestValidationError)):
        return error_response(validation_error(exc))
    if isinstance(exc, StarletteHTTPException):
        error_type, code = _STATUS_TYPES.get(exc.status_code, ("server_error", "http_error"))
        error = OpenAutoGLMError(str(exc.detail), code=code)
        error.status, error.type = exc.status_code, error_type
        response = error_response(error)
        if exc.headers:
            response.headers.update(exc.headers)
        return response
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(OpenAutoGLMError("The server had an error processing your request."))


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception that reaches FastAPI to an OpenAI-style error body."""

    async def handle(request: Request, exc: Exception) -> Response:
        return response_for(exc, request)

    for kind in (
        OpenAutoGLMError,
        ValidationError,
        RequestValidationError,
        StarletteHTTPException,
        Exception,
    ):
        app.add_exception_handler(kind, handle)
