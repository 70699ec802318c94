"""The one mapping between error kinds and gRPC status codes, both ways.

Servers (`transport/rpc.py`, the interceptors that reject a call) answer a TextserveError
with `abort`: its code from `STATUS_OF`, its message unchanged, and for InvalidInput the
standard `google.rpc.BadRequest` detail naming the field (`texts[3]`) through
grpcio-status, so clients read the field instead of parsing the message. Anything that is
not a TextserveError is INTERNAL (the boundary logs it and sends no detail).

Clients turn a failed call to another service back into a kind with `from_rpc_error`
(`KIND_OF`): INVALID_ARGUMENT becomes an InvalidInput that keeps the field of the detail and
the message as it was sent (the fields it names are the ones the caller sent); other kinds
keep the other service's message after the name of that service.

Every refusal (Overloaded -> RESOURCE_EXHAUSTED) also carries retry guidance: the
`grpc-retry-pushback-ms` trailer, which gRPC retry policies honour (the admission
interceptor sets the server's value for the call, `set_retry_pushback_ms`); clients read it
with `retry_pushback_ms`.
"""

from __future__ import annotations

import asyncio
import random
import re
from contextvars import ContextVar
from typing import Any, NamedTuple, NoReturn

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

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

STATUS_OF: dict[type[TextserveError], grpc.StatusCode] = {
    TextserveError: grpc.StatusCode.INTERNAL,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    BackendFailure: grpc.StatusCode.INTERNAL,
}
"""Error kind -> the status a server answers with."""

KIND_OF: dict[grpc.StatusCode, type[TextserveError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    # A connection dropped in the middle of a call ("Stream removed") is UNKNOWN.
    grpc.StatusCode.UNKNOWN: NotReady,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: BackendFailure,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.FAILED_PRECONDITION: BackendFailure,
    grpc.StatusCode.ABORTED: BackendFailure,
    grpc.StatusCode.OUT_OF_RANGE: BackendFailure,
    grpc.StatusCode.UNIMPLEMENTED: BackendFailure,
    grpc.StatusCode.INTERNAL: BackendFailure,
    grpc.StatusCode.UNAVAILABLE: NotReady,
    grpc.StatusCode.DATA_LOSS: BackendFailure,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}
"""Status of a failed call to another service -> the kind it becomes (every code but OK)."""

_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)
"""`field: problem`, the message of an InvalidInput, read only from a peer that sent no detail."""


def status_of(error: BaseException) -> grpc.StatusCode:
    """The status a server answers `error` with: its kind's, CANCELLED for a cancelled task,
    INTERNAL for anything else."""
    for kind in type(error).__mro__:
        code = STATUS_OF.get(kind)  # type: ignore[call-overload]
        if code is not None:
            return code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""Trailer of a refused call: milliseconds the client should wait before retrying (gRFC A6)."""

DEFAULT_RETRY_PUSHBACK_MS = 250
"""Pushback of a refusal outside a call the admission interceptor saw (server.retry_pushback_ms)."""

_PUSHBACK_MS: ContextVar[int] = ContextVar("textserve_retry_pushback_ms", default=DEFAULT_RETRY_PUSHBACK_MS)


def set_retry_pushback_ms(milliseconds: int) -> None:
    """The pushback the refusals of the call this task serves carry (0: none)."""
    _PUSHBACK_MS.set(milliseconds)


def retry_pushback(milliseconds: int | None = None) -> tuple[tuple[str, str], ...]:
    """The pushback trailer: `milliseconds` (default: this call's) with +-50% jitter, so refused
    callers spread their retries; empty for 0."""
    base = _PUSHBACK_MS.get() if milliseconds is None else milliseconds
    if base <= 0:
        return ()
    return ((RETRY_PUSHBACK_KEY, str(max(1, round(base * random.uniform(0.5, 1.5))))),)


def retry_pushback_ms(call: object) -> int | None:
    """The pushback a failed call carries, in milliseconds, or None when it has none."""
    trailing = getattr(call, "trailing_metadata", None)
    if not callable(trailing):
        return None
    for key, value in trailing() or ():
        if key == RETRY_PUSHBACK_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return int(text) if text.isdigit() else None
    return None


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, Any], ...]


def rich_status(error: TextserveError) -> grpc.Status:
    """Code, message and trailing metadata of `error`; an InvalidInput naming its field
    carries a `google.rpc.BadRequest` field violation (field path, problem), an Overloaded
    the retry pushback."""
    code = status_of(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    if isinstance(error, InvalidInput) and error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.problem)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    converted = rpc_status.to_status(status)
    if isinstance(error, Overloaded):
        trailing = (*converted.trailing_metadata, *retry_pushback())
        return _Status(converted.code, converted.details, trailing)  # type: ignore[return-value]
    return converted


async def abort(context: grpc.aio.ServicerContext, error: TextserveError) -> NoReturn:
    """Ends the RPC being served with `error` (see `rich_status`)."""
    status = rich_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable")  # pragma: no cover - abort always raises


def field_violation(call: object) -> tuple[str, str] | None:
    """(field, problem) of the first BadRequest field violation a failed call carries, if any."""
    if not all(callable(getattr(call, name, None)) for name in ("trailing_metadata", "code", "details")):
        return None
    try:
        status = rpc_status.from_call(call)  # type: ignore[arg-type]
    except (ValueError, DecodeError):  # details that do not match the status: not ours to read
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                return str(violation.field), str(violation.description)
    return None


def error_from_status(
    code: grpc.StatusCode,
    details: str,
    violation: tuple[str, str] | None = None,
    upstream: str | None = None,
) -> TextserveError:
    """The kind of a status another service answered with (see `from_rpc_error`).

    Without a BadRequest detail (a peer that sends none), an INVALID_ARGUMENT message of the
    form `field: problem` still gives the field.
    """
    kind = KIND_OF.get(code, BackendFailure)
    if kind is InvalidInput:
        if violation is None:
            match = _FIELD.match(details)
            violation = (match.group(1), match.group(2)) if match else ("", details)
        field, problem = violation
        fallback = f"{upstream}: invalid argument" if upstream else "invalid argument"
        return InvalidInput(field, problem, message=details or fallback)
    return kind(f"{upstream}: {details}" if upstream else details)


def from_rpc_error(error: BaseException, upstream: str | None = None) -> TextserveError:
    """Turns a failed call to another service into our error kind, keeping its status.

    INVALID_ARGUMENT keeps the other service's message unchanged and the field of its
    BadRequest detail: the fields it names (`texts[3]`) are the ones the caller sent,
    forwarded as they were. Other messages are prefixed with `upstream` (how errors name the
    other service) when it is given.
    """
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    details = error.details() if callable(getattr(error, "details", None)) else str(error)  # type: ignore[attr-defined]
    return error_from_status(code, details or "", field_violation(error), upstream)
