"""Errors the server answers with, and their OpenAI- and Anthropic-style bodies.

Handlers raise :class:`ServingError` subclasses and never build error bodies;
the exception handlers installed by :func:`install_error_handlers` render one
in the style of the endpoint that failed (``/v1/messages`` speaks Anthropic,
everything else OpenAI)::

    OpenAI:    {"error": {"message", "type", "param", "code"}}
    Anthropic: {"type": "error", "error": {"type", "message"}}

Upstream failures (:mod:`models.providers.errors`) map to 4xx/5xx with a
message that never carries a credential: it passes through the process's
scrubber (:mod:`serving.secrets`), which knows every key the provider pool
can send. Malformed input of any kind is a 4xx: an unexpected exception
becomes a 500 with a generic message.
"""

from __future__ import annotations

import logging
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.providers import errors as upstream

log = logging.getLogger("thrifty.serving")

ANTHROPIC_PATHS = ("/v1/messages",)


class ServingError(Exception):
    status = 500
    openai_type = "server_error"
    anthropic_type = "api_error"
    code: str | None = None
    kind: str | None = None  # what the store records as error_kind (default: the class name)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(ServingError):
    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class AuthenticationFailed(ServingError):
    status = 401
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"


class NotFound(ServingError):
    status = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"


class Conflict(ServingError):
    """The request is well formed but does not apply to the resource as it is (e.g. feedback on a failed decision)."""

    status = 409
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class UnknownModel(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ServingError):
    status = 405
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class LimitUnmet(InvalidRequest):
    """No allowed model meets the request's max-cost / min-quality limit (and the request does not degrade)."""

    code = "limit_unmet"
    kind = "limit_unmet"


class NoRoutableModel(ServingError):
    """The server cannot route: its router knows none of the models it may use (a configuration problem)."""

    status = 503
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "no_routable_model"

    def __init__(self, message: str, **kw):
        super().__init__(message, **kw)
        self.headers = {"x-should-retry": "false", **self.headers}  # the SDKs would retry a 503 in vain


class PayloadTooLarge(ServingError):
    status = 413
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"
    code = "request_too_large"


class UpstreamRejected(ServingError):
    """The chosen model's upstream refused this request (400-class): the client's to fix."""

    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class RateLimited(ServingError):
    status = 429
    openai_type = "requests"
    anthropic_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BadGateway(ServingError):
    status = 502
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "upstream_error"


class UpstreamOverloaded(ServingError):
    status = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    code = "upstream_unavailable"


class GatewayTimeout(ServingError):
    status = 504
    openai_type = "server_error"
    anthropic_type = "timeout_error"
    code = "upstream_timeout"


class ModelsUnavailable(UpstreamOverloaded):
    """Every model the request may use is out (circuit breakers open): retry after ``retry-after``."""

    code = "models_unavailable"
    kind = "circuit_open"


class BudgetExceeded(ServingError):
    """The client's spend limit for the period cannot cover this request's maximum cost."""

    status = 429
    openai_type = "insufficient_quota"
    anthropic_type = "rate_limit_error"
    code = "budget_exceeded"
    kind = "budget"


class Scrubs(Protocol):
    def scrub(self, text: str) -> str: ...


def from_upstream(exc: upstream.UpstreamError, scrubber: Scrubs) -> ServingError:
    """The client-facing error for an upstream failure, its text scrubbed of every registered credential."""
    message = scrubber.scrub(exc.message)
    if isinstance(exc, upstream.UpstreamRateLimited):
        headers = {"retry-after": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else {}
        return RateLimited(message, headers=headers)
    if isinstance(exc, upstream.UpstreamTimeout):
        return GatewayTimeout(message)
    if isinstance(exc, upstream.UpstreamUnavailable):
        return UpstreamOverloaded(message)
    if isinstance(exc, upstream.ContextLengthExceeded):
        return UpstreamRejected(message, code="context_length_exceeded", param="messages")
    if isinstance(exc, upstream.UpstreamBadRequest):
        code = exc.code if exc.code and exc.code.isidentifier() and scrubber.scrub(exc.code) == exc.code else None
        return UpstreamRejected(message, code=code)
    return BadGateway(message)


def style_for(path: str) -> str:
    return "anthropic" if path.startswith(ANTHROPIC_PATHS) else "openai"


def error_body(style: str, error: ServingError) -> dict:
    if style == "anthropic":
        return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}
    return {"error": {"message": error.message, "type": error.openai_type, "param": error.param, "code": error.code}}


def error_response(request: Request, error: ServingError) -> JSONResponse:
    return JSONResponse(error_body(style_for(request.url.path), error), status_code=error.status, headers=error.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError):
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(request, InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kinds = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge, 401: AuthenticationFailed}
        cls = kinds.get(exc.status_code, InvalidRequest if exc.status_code < 500 else ServingError)
        error = cls(str(exc.detail) if exc.detail else "error")
        error.status = exc.status_code
        return error_response(request, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request, ServingError("internal error in thrifty"))
