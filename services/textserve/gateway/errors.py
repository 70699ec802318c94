"""The one mapping from a failure to an HTTP status and an OpenAI error body.

Every failure the gateway answers with passes through `http_error`: a gRPC status from a
service (`grpc.aio.AioRpcError`), one of our own `TextserveError`s (which carry a gRPC
code), or a request the gateway itself rejects. The status code decides the HTTP status
and the OpenAI error `type`; the service's message (`texts[3]: must not be empty`) gives
the `param`, renamed to the OpenAI field the client sent (`input[3]`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from textserve.core.errors import TextserveError
from textserve.gateway.protocol import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

# gRPC status -> (HTTP status, OpenAI error type). The single table; see docs/gateway.md.
STATUS_MAP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.ABORTED: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.CANCELLED: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
    grpc.StatusCode.INTERNAL: (500, "server_error"),
    grpc.StatusCode.UNKNOWN: (500, "server_error"),
    grpc.StatusCode.DATA_LOSS: (500, "server_error"),
}
_HTTP_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error"}
_HTTP_TYPES.update({413: "invalid_request_error", 415: "invalid_request_error"})
RETRY_AFTER_S = 1
"""Retry-After sent with 429 and 503 (the OpenAI clients honour it)."""

_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)

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


def from_status(code: grpc.StatusCode, message: str, rename: Renamer | None = None) -> GatewayError:
    """The error for a gRPC status and its message; `field: problem` messages set `param`."""
    status, type_ = STATUS_MAP.get(code, (500, "server_error"))
    param = None
    match = _FIELD.match(message or "")
    if match and status == 400:
        param = rename(match.group(1)) if rename else match.group(1)
        message = f"{param}: {match.group(2)}"
    return GatewayError(status, message or code.name.lower(), type_, param, code.name.lower())


def invalid(param: str, problem: str) -> GatewayError:
    """400 for a request the gateway rejects itself, naming the field."""
    return from_status(grpc.StatusCode.INVALID_ARGUMENT, f"{param}: {problem}")


def http_error(error: BaseException, rename: Renamer | None = None, upstream: str = "") -> GatewayError:
    """Any failure -> GatewayError (the single mapping point). Unexpected errors become 500."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, grpc.aio.AioRpcError):
        code = error.code()
        details = error.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and upstream:
            details = f"{upstream} service unavailable: {details}"
        return from_status(code, details, rename)
    if isinstance(error, TextserveError):
        return from_status(error.code, error.message, rename)
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
