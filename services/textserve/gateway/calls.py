"""What an HTTP request hands on to its gRPC calls: a deadline and metadata.

The deadline is the gateway's `client.timeout_s`, shortened by an `x-request-timeout`
header (seconds) when the client sends one; every call made for the request gets what is
left of it (`time_left`, applied by the upstream-call helper of textserve/client/), so the
services drop work whose client has stopped waiting. The caller's `Authorization` header
(when `forward_authorization`) and `x-request-id` are passed on as gRPC metadata; without a
caller token the channel adds the gateway's `client_token`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from starlette.requests import Request

from textserve.core.errors import InvalidInput
from textserve.core.validation import MAX_REQUEST_ID_CHARS
from textserve.gateway.config import GatewayConfig
from textserve.gateway.errors import from_kind
from textserve.transport.rpc import REQUEST_ID_KEY

TIMEOUT_HEADER = "x-request-timeout"
"""Header a client may send to shorten the deadline (seconds, e.g. `2.5`)."""
REQUEST_ID_HEADER = REQUEST_ID_KEY
"""Header passed on to the services for tracing."""


@dataclass(frozen=True)
class CallOptions:
    """Deadline and metadata of the gRPC calls made for one HTTP request."""

    deadline: float
    """Absolute time.monotonic() deadline."""
    metadata: tuple[tuple[str, str], ...] = ()
    """gRPC metadata passed on (authorization, x-request-id)."""


def _bad_header(problem: str) -> InvalidInput:
    # A header is not a body field: no `param`, the header's name leads the message.
    return InvalidInput("", f"{TIMEOUT_HEADER}: {problem}")


def call_options(request: Request, config: GatewayConfig) -> CallOptions:
    """CallOptions of an HTTP request (400 when x-request-timeout is not a positive number)."""
    timeout = config.client.timeout_s
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is not None:
        try:
            asked = float(raw)
        except ValueError:
            raise from_kind(_bad_header(f"must be a number of seconds, got {raw!r}")) from None
        if not math.isfinite(asked) or asked <= 0:
            raise from_kind(_bad_header(f"must be a positive number of seconds, got {raw!r}"))
        timeout = min(timeout, asked)
    metadata: list[tuple[str, str]] = []
    authorization = request.headers.get("authorization")
    if config.forward_authorization and authorization:
        metadata.append(("authorization", authorization))
    request_id = request.headers.get(REQUEST_ID_HEADER)
    if request_id:
        metadata.append((REQUEST_ID_HEADER, request_id[:MAX_REQUEST_ID_CHARS]))
    return CallOptions(time.monotonic() + timeout, tuple(metadata))
