"""What an HTTP request hands on to its gRPC calls: a deadline and metadata.

The deadline is the gateway's `client.timeout_s`, shortened by an `x-request-timeout`
header (seconds) when the client sends one; every call made for the request gets what is
left of it, so the services drop work whose client has stopped waiting. The caller's
`Authorization` header (when `forward_authorization`) and `x-request-id` are passed on as
gRPC metadata; without a caller token the channel adds the gateway's `client_token`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import grpc
from starlette.requests import Request

from textserve.gateway.config import GatewayConfig
from textserve.gateway.errors import from_status, invalid
from textserve.transport.deadlines import MIN_TIMEOUT_S

TIMEOUT_HEADER = "x-request-timeout"
"""Header a client may send to shorten the deadline (seconds, e.g. `2.5`)."""
REQUEST_ID_HEADER = "x-request-id"
"""Header passed on to the services for tracing."""


@dataclass(frozen=True)
class CallOptions:
    """Deadline and metadata of the gRPC calls made for one HTTP request."""

    deadline: float
    """Absolute time.monotonic() deadline."""
    metadata: tuple[tuple[str, str], ...] = ()
    """gRPC metadata passed on (authorization, x-request-id)."""

    def timeout(self) -> float:
        """Seconds left for the next call; a passed deadline is a 504 before any call."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise from_status(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the service was called"
            )
        return max(left, MIN_TIMEOUT_S)


def call_options(request: Request, config: GatewayConfig) -> CallOptions:
    """CallOptions of an HTTP request (400 when x-request-timeout is not a positive number)."""
    timeout = config.client.timeout_s
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is not None:
        try:
            asked = float(raw)
        except ValueError:
            raise invalid(TIMEOUT_HEADER, f"must be a number of seconds, got {raw!r}") from None
        if not math.isfinite(asked) or asked <= 0:
            raise invalid(TIMEOUT_HEADER, f"must be a positive number of seconds, got {raw!r}")
        timeout = min(timeout, asked)
    metadata: list[tuple[str, str]] = []
    authorization = request.headers.get("authorization")
    if config.forward_authorization and authorization:
        metadata.append(("authorization", authorization))
    request_id = request.headers.get(REQUEST_ID_HEADER)
    if request_id:
        metadata.append((REQUEST_ID_HEADER, request_id[:128]))
    return CallOptions(time.monotonic() + timeout, tuple(metadata))
