"""The servicer boundary: one decorator per RPC kind that maps errors and records metrics.

`unary_rpc` / `stream_rpc` wrap servicer methods. They turn TextserveError into its
status (the table of transport/status.py, with the BadRequest detail of an InvalidInput),
anything unexpected into INTERNAL (logged, not sent), and record
textserve_requests_total / textserve_request_duration_seconds by service, method, code (and a
refusal of the service, Overloaded, in textserve_requests_refused_total{reason="queue_full"}).
`request_deadline` turns the call's deadline into an absolute monotonic time; `request_id`
reads the caller's x-request-id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from textserve.core import metrics
from textserve.core.errors import Overloaded, TextserveError
from textserve.transport.registration import check_request
from textserve.transport.status import abort, status_of

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def request_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """Absolute time.monotonic() deadline of the call, or None when the client set none."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + float(remaining)


REQUEST_ID_KEY = "x-request-id"
"""Metadata key of the caller's request id (the gateway passes its HTTP header on as is)."""


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The call's x-request-id metadata, or "" when the caller sent none."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


MODEL_VERSION_KEY = "x-textserve-model-version"
"""Metadata key pinning a request to a model version (lifecycle/; the request field wins)."""
ROUTING_KEY_KEY = "x-textserve-routing-key"
"""Metadata key of a request's routing key: the same key reaches the same version (the field wins)."""


def routing_metadata(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    """(pinned version, routing key) from the call's metadata; "" for each one absent."""
    pin = key = ""
    for name, value in context.invocation_metadata() or ():
        if name in (MODEL_VERSION_KEY, ROUTING_KEY_KEY):
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            if name == MODEL_VERSION_KEY:
                pin = text.strip()
            else:
                key = text
    return pin, key


_CHILDREN: dict[tuple[str, str, grpc.StatusCode], tuple[Any, Any]] = {}


def _record(service: str, method: str, code: grpc.StatusCode, started: float) -> None:
    key = (service, method, code)
    children = _CHILDREN.get(key)
    if children is None:  # first RPC with this outcome: resolve the labelled children once
        labels = {"service": service, "method": method, "code": code.name}
        children = (metrics.REQUESTS.labels(**labels), metrics.REQUEST_DURATION.labels(**labels))
        _CHILDREN[key] = children
    children[0].inc()
    children[1].observe(time.perf_counter() - started)


async def _abort(
    context: grpc.aio.ServicerContext, error: BaseException, service: str, method: str
) -> grpc.StatusCode:
    if isinstance(error, TextserveError):
        await abort(context, error)
    log.exception("unexpected error", extra={"service": service, "method": method}, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(error).__name__}")
    raise AssertionError("unreachable")  # pragma: no cover


async def _failed(
    context: grpc.aio.ServicerContext,
    error: BaseException,
    service: str,
    method: str,
    started: float,
    passthrough: tuple[type[BaseException], ...],
) -> None:
    """Records a failed RPC and, unless it was aborted already or is one of `passthrough`
    (cancellation), aborts it with the status of `error`; the caller re-raises."""
    if isinstance(error, grpc.aio.AbortError):
        code = context.code() if callable(getattr(context, "code", None)) else None
        _record(service, method, code or grpc.StatusCode.UNKNOWN, started)
        return
    _record(service, method, status_of(error), started)
    if isinstance(error, Overloaded):  # answered with the retry pushback (transport/status.py)
        metrics.REQUESTS_REFUSED.labels(service=service, method=method, reason="queue_full").inc()
    if not isinstance(error, passthrough):
        await _abort(context, error, service, method)


def unary_rpc(
    service: str, method: str
) -> Callable[
    [Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]]],
    Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
]:
    """Decorates a unary servicer method (request decoding check, error mapping, metrics)."""

    def decorate(
        func: Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
    ) -> Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
        in_flight = metrics.REQUESTS_IN_FLIGHT.labels(service=service, method=method)

        @functools.wraps(func)
        async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            started = time.perf_counter()
            in_flight.inc()
            try:
                check_request(request)  # a request that did not decode -> INVALID_ARGUMENT
                response = await func(self, request, context)
            except BaseException as error:
                await _failed(context, error, service, method, started, (asyncio.CancelledError,))
                raise
            finally:
                in_flight.dec()
            _record(service, method, grpc.StatusCode.OK, started)
            return response

        return wrapper

    return decorate


def stream_rpc(
    service: str, method: str
) -> Callable[
    [Callable[[Self, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]]],
    Callable[[Self, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]],
]:
    """Decorates a server-streaming (or bidi) servicer method written as an async generator."""

    def decorate(
        func: Callable[[Self, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]],
    ) -> Callable[[Self, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
        in_flight = metrics.REQUESTS_IN_FLIGHT.labels(service=service, method=method)

        @functools.wraps(func)
        async def wrapper(self: Self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
            started = time.perf_counter()
            in_flight.inc()
            try:
                check_request(request)  # a single request that did not decode (streams check each item)
                async for item in func(self, request, context):
                    yield item
            except BaseException as error:
                await _failed(
                    context, error, service, method, started, (asyncio.CancelledError, GeneratorExit)
                )
                raise
            finally:
                in_flight.dec()
            _record(service, method, grpc.StatusCode.OK, started)

        return wrapper

    return decorate
