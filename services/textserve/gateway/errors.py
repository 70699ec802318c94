"""The one mapping from a failure to an HTTP status and an OpenAI error body.

Every failure the gateway answers with passes through `http_error`: an error kind from a
service call (textserve/client/ turns its gRPC status into one, transport/status.py), one
raised here, or a request the gateway itself rejects. The kind decides the HTTP status and
the OpenAI error `type` (`HTTP_STATUS`, the single table); an InvalidInput's field (from the
service's BadRequest detail, `texts[3]`) gives the `param`, renamed to the OpenAI field the
client sent (`input[3]`). The body's `code` is the gRPC status name of the kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from textserve.core.errors import (
    BackendFailure,
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    TextserveError,
    Unauthenticated,
)
from textserve.gateway.protocol import ErrorDetail, ErrorResponse
from textserve.transport.status import KIND_OF, error_from_status, from_rpc_error, status_of

log = logging.getLogger(__name__)

# Error kind -> (HTTP status, OpenAI error type). The single table; see docs/gateway.md.
HTTP_STATUS: dict[type[TextserveError], tuple[int, str]] = {
    TextserveError: (500, "server_error"),
    InvalidInput: (400, "invalid_request_error"),
    Unauthenticated: (401, "authentication_error"),
    PermissionDenied: (403, "permission_error"),
    NotFound: (404, "not_found_error"),
    Overloaded: (429, "rate_limit_error"),
    NotReady: (503, "service_unavailable_error"),
    Cancelled: (503, "service_unavailable_error"),
    DeadlineExceeded: (504, "timeout_error"),
    BackendFailure: (500, "server_error"),
}
STATUS_MAP: dict[grpc.StatusCode, tuple[int, str]] = {
    code: HTTP_STATUS[kind] for code, kind in KIND_OF.items()
}
"""What each gRPC status a service answers with becomes (through its kind); for docs and tests."""
_HTTP_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error"}
_HTTP_TYPES.update({413: "invalid_request_error", 415: "invalid_request_error"})
RETRY_AFTER_S = 1
"""Retry-After sent with 429 and 503 (the OpenAI clients honour it)."""

Renamer = Callable[[str], str]
"""Turns a service field name (`texts[3]`) into the client's OpenAI field name (`input[3]`)."""


class GatewayError(Exception):
    """A failure answered as an OpenAI error body with an HTTP status."""

    def __init__(
        self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> ErrorResponse:
        """The OpenAI error body."""
        return ErrorResponse(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        )

    def headers(self) -> dict[str, str]:
        """Extra headers (Retry-After on 429 and 503)."""
        return {"retry-after": str(RETRY_AFTER_S)} if self.status in (429, 503) else {}


def _http_status(error: TextserveError) -> tuple[int, str]:
    for kind in type(error).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]  # type: ignore[index]
    return 500, "server_error"  # pragma: no cover - TextserveError is in the table


def from_kind(error: TextserveError, rename: Renamer | None = None, upstream: str = "") -> GatewayError:
    """The error for one of our error kinds; an InvalidInput naming its field sets `param`.

    `upstream` names the service a NotReady came from (`embedding service unavailable: ...`).
    """
    status, type_ = _http_status(error)
    code = status_of(error).name.lower()
    message = error.message
    param = None
    if isinstance(error, InvalidInput) and error.field:
        param = rename(error.field) if rename else error.field
        message = f"{param}: {error.problem}"
    elif isinstance(error, NotReady) and upstream:
        message = f"{upstream} service unavailable: {message}"
    return GatewayError(status, message or code, type_, param, code)


def from_status(code: grpc.StatusCode, message: str, rename: Renamer | None = None) -> GatewayError:
    """The error for a gRPC status and its message (`field: problem` sets `param`)."""
    return from_kind(error_from_status(code, message), rename)


def invalid(param: str, problem: str) -> GatewayError:
    """400 for a request the gateway rejects itself, naming the field."""
    return from_kind(InvalidInput(param, problem))


def http_error(error: BaseException, rename: Renamer | None = None, upstream: str = "") -> GatewayError:
    """Any failure -> GatewayError (the single mapping point). Unexpected errors become 500."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, TextserveError):
        return from_kind(error, rename, upstream)
    if isinstance(error, grpc.aio.AioRpcError):  # a stub called directly, not through textserve/client/
        return from_kind(from_rpc_error(error), rename, upstream)
    log.error("unexpected gateway error", exc_info=error)
    return GatewayError(500, f"internal error: {type(error).__name__}", "server_error", code="internal")


def error_response(error: GatewayError) -> JSONResponse:
    """The HTTP response of an error."""
    return JSONResponse(error.body().model_dump(), status_code=error.status, headers=error.headers())


def _loc_to_param(loc: tuple[Any, ...]) -> str:
    parts = [part for part in loc if part not in ("body", "query", "header")]
    param = ""
    for part in parts:
        if isinstance(part, int):
            param += f"[{part}]"
        elif "[" in str(part) or "function-" in str(part):
            continue  # union branch names such as `list[str]`
        else:
            param += f".{part}" if param else str(part)
    return param or "body"


def validation_error(exc: RequestValidationError) -> GatewayError:
    """400 for a body that does not parse or fit the schema, naming the first bad field."""
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    param = _loc_to_param(tuple(first.get("loc", ())))
    message = f"{param}: {first.get('msg', 'invalid')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return GatewayError(400, message, "invalid_request_error", param, "invalid_argument")


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can raise is answered in the OpenAI shape."""

    async def on_gateway_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(http_error(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        type_ = _HTTP_TYPES.get(
            exc.status_code, "server_error" if exc.status_code >= 500 else "invalid_request_error"
        )
        error = GatewayError(exc.status_code, str(exc.detail), type_, code=None)
        return JSONResponse(error.body().model_dump(), status_code=exc.status_code, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(http_error(exc))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(TextserveError, on_gateway_error)
    app.add_exception_handler(grpc.aio.AioRpcError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
