"""The one way a call to another textserve service is made: time, metadata, errors, metrics.

`unary_call` and `stream_call` take a stub method and the request and
- give the call what is left of the caller's deadline (`time_left`: the request's own
  deadline, else the client default, capped by the RPC being served; a passed deadline is
  DeadlineExceeded before any call),
- pass the caller's metadata on (x-request-id, a forwarded authorization; the channel of
  client/channels.py adds the bearer token and TLS),
- never wait for a connection (`wait_for_ready=False`: an unreachable service is
  UNAVAILABLE at once),
- turn a failure into our error kind with `from_rpc_error` (an InvalidInput keeps the field
  of the other service's BadRequest detail),
- count the call in textserve_upstream_requests_total / _duration_seconds with its status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from textserve.core import metrics
from textserve.transport.deadlines import time_left
from textserve.transport.status import from_rpc_error

Resp = TypeVar("Resp")

Metadata = Sequence[tuple[str, str]]
"""gRPC metadata passed on with a call."""


def record_call(service: str, method: str, code: grpc.StatusCode, started: float) -> None:
    """Counts one call to another service (textserve_upstream_requests_total) and its duration."""
    metrics.UPSTREAM_REQUESTS.labels(service=service, method=method, code=code.name).inc()
    metrics.UPSTREAM_DURATION.labels(service=service, method=method, code=code.name).observe(
        time.perf_counter() - started
    )


def _invoke(
    rpc: Callable[..., Any],
    request: Any,
    deadline: float | None,
    default_timeout_s: float | None,
    metadata: Metadata,
) -> Any:
    """Starts the stub method with what is left of the deadline, the metadata, and no
    waiting for a connection (DeadlineExceeded once the deadline passed)."""
    timeout = time_left(deadline, default_timeout_s)
    return rpc(request, timeout=timeout, metadata=tuple(metadata), wait_for_ready=False)


async def unary_call(
    rpc: Callable[..., Awaitable[Resp]],
    request: Any,
    *,
    service: str,
    method: str,
    deadline: float | None,
    default_timeout_s: float | None = None,
    metadata: Metadata = (),
    upstream: str | None = None,
) -> Resp:
    """Calls the unary stub method `rpc` (see the module docstring).

    `service` labels the calling service's metrics, `method` the call
    (`TokenizerService/Tokenize`); `upstream` names the other service in error messages
    (None: its messages are kept as they were sent).
    """
    started = time.perf_counter()
    try:
        response = await _invoke(rpc, request, deadline, default_timeout_s, metadata)
    except grpc.aio.AioRpcError as error:
        record_call(service, method, error.code(), started)
        raise from_rpc_error(error, upstream) from error
    except asyncio.CancelledError:
        record_call(service, method, grpc.StatusCode.CANCELLED, started)
        raise
    record_call(service, method, grpc.StatusCode.OK, started)
    return response


class UpstreamStream:
    """A server-streaming call: `read()` gives messages until None; counted once when it ends."""

    def __init__(self, call: Any, *, service: str, method: str, upstream: str | None) -> None:
        self._call = call
        self._service = service
        self._method = method
        self._upstream = upstream
        self._started = time.perf_counter()
        self._recorded = False

    def _record(self, code: grpc.StatusCode) -> None:
        if not self._recorded:
            self._recorded = True
            record_call(self._service, self._method, code, self._started)

    async def read(self) -> Any | None:
        """The next message, or None when the stream ended; a failure raises our error kind."""
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as error:
            self._record(error.code())
            raise from_rpc_error(error, self._upstream) from error
        except asyncio.CancelledError:
            self.cancel()
            raise
        if message is grpc.aio.EOF:  # type: ignore[attr-defined]
            self._record(grpc.StatusCode.OK)
            return None
        return message

    def cancel(self) -> None:
        """Cancels the call (the service frees its work at once); no-op once it ended."""
        if not self._recorded:
            self._record(grpc.StatusCode.CANCELLED)
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not None:
            yield message


def stream_call(
    rpc: Callable[..., Any],
    request: Any,
    *,
    service: str,
    method: str,
    deadline: float | None,
    default_timeout_s: float | None = None,
    metadata: Metadata = (),
    upstream: str | None = None,
) -> UpstreamStream:
    """Starts the server-streaming stub method `rpc` (arguments as for `unary_call`)."""
    call = _invoke(rpc, request, deadline, default_timeout_s, metadata)
    return UpstreamStream(call, service=service, method=method, upstream=upstream)
