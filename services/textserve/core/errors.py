"""Error kinds of textserve and their one mapping to gRPC status codes.

Every failure a client can see is a TextserveError subclass carrying its status code.
Servicers raise these; `core.rpc` turns them into statuses in one place, and anything
unexpected becomes INTERNAL (with the detail logged, not sent).
"""

from __future__ import annotations

import grpc


class TextserveError(Exception):
    """Base of all errors a client may see."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(TextserveError):
    """The request is malformed or over a limit; the message names the field and the limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(TextserveError):
    """A named model, label set or other resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class Overloaded(TextserveError):
    """The queue is full; the client should back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(TextserveError):
    """The request's deadline passed before its work was done; the work was not computed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(TextserveError):
    """The client went away; nothing is sent back."""

    code = grpc.StatusCode.CANCELLED


class NotReady(TextserveError):
    """The model is not loaded yet, or a service this one depends on is unreachable."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(TextserveError):
    """No or malformed credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TextserveError):
    """Credentials were given but are not accepted."""

    code = grpc.StatusCode.PERMISSION_DENIED


class BackendFailure(TextserveError):
    """The model backend failed; a server fault the client cannot fix."""

    code = grpc.StatusCode.INTERNAL


_FROM_GRPC: dict[grpc.StatusCode, type[TextserveError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAVAILABLE: NotReady,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def from_rpc_error(error: grpc.RpcError, upstream: str) -> TextserveError:
    """Turns a failed call to another textserve service into our error, keeping its code.

    INVALID_ARGUMENT keeps the other service's message unchanged: the fields it names
    (`texts[3]`) are the ones the caller sent, forwarded as they were.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        passed = TextserveError(details or f"{upstream}: invalid argument")
        passed.code = grpc.StatusCode.INVALID_ARGUMENT
        return passed
    message = f"{upstream}: {details}"
    kind = _FROM_GRPC.get(code, NotReady if code == grpc.StatusCode.UNKNOWN else BackendFailure)
    return kind(message)
