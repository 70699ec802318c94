"""Error kinds of textserve, free of any transport.

Every failure a client can see is a TextserveError subclass. Services raise these; each
transport maps the kinds in one table of its own: gRPC status codes (and the structured
details naming the field) in `transport/status.py`, HTTP statuses in `gateway/errors.py`.
Anything unexpected becomes INTERNAL there, with the detail logged, not sent.
"""

from __future__ import annotations


class TextserveError(Exception):
    """Base of all errors a client may see."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(TextserveError):
    """The request is malformed or over a limit; `field` names the field, `problem` the limit.

    The message reads `<field>: <problem>`. An error forwarded from another service keeps
    that service's message as it was sent (`message`), and its field when the service named
    one; `field` is empty when it did not.
    """

    def __init__(self, field: str, problem: str, *, message: str | None = None) -> None:
        if message is None:
            message = f"{field}: {problem}" if field else problem
        super().__init__(message)
        self.field = field
        self.problem = problem


class NotFound(TextserveError):
    """A named model, label set or other resource does not exist."""


class Overloaded(TextserveError):
    """The queue is full; the client should back off and retry."""


class DeadlineExceeded(TextserveError):
    """The request's deadline passed before its work was done; the work was not computed."""


class Cancelled(TextserveError):
    """The client went away; nothing is sent back."""


class NotReady(TextserveError):
    """The model is not loaded yet, or a service this one depends on is unreachable."""


class Unauthenticated(TextserveError):
    """No or malformed credentials."""


class PermissionDenied(TextserveError):
    """Credentials were given but are not accepted."""


class BackendFailure(TextserveError):
    """The model backend failed; a server fault the client cannot fix."""
