"""ASGI middleware of the gateway: HTTP metrics, and the request body size limit.

`HttpMetrics` records the metrics every service exports (textserve_requests_total,
textserve_request_duration_seconds, textserve_requests_in_flight) with service="gateway",
method = the route template (`/v1/chat/completions`; unmatched paths are `other`, so no
client data lands in a label) and code = the HTTP status ("200", "429", "503"); a stream
counts until its last byte. Dashboards and alerts read the gateway from the same series. `BodyLimit`
answers 413 in the OpenAI error shape for a body over `max_body_bytes`, whether the client
announced its length or sent it chunked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from textserve.core import metrics
from textserve.gateway.backends import SERVICE
from textserve.gateway.errors import GatewayError

OTHER_ROUTE = "other"
"""`method` label of requests that match no route."""


class HttpMetrics:
    """Counts requests, their duration and how many are in flight, by route and status."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], service: str = SERVICE) -> None:
        self.app = app
        self.templates: list[tuple[re.Pattern[str], str]] = [
            (route.path_regex, route.path) for route in routes if isinstance(route, Route | APIRoute)
        ]
        self.service = service

    def _route_of(self, scope: Scope) -> str:
        path = str(scope.get("path", ""))
        for pattern, template in self.templates:
            if pattern.match(path):
                return template
        return OTHER_ROUTE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route_of(scope)
        started = time.perf_counter()
        status = 500
        in_flight = metrics.REQUESTS_IN_FLIGHT.labels(service=self.service, method=route)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            in_flight.dec()
            labels = {"service": self.service, "method": route, "code": str(status)}
            metrics.REQUESTS.labels(**labels).inc()
            metrics.REQUEST_DURATION.labels(**labels).observe(time.perf_counter() - started)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"request body is larger than max_body_bytes={limit}",
        "invalid_request_error",
        code="body_too_large",
    )


async def _send_error(send: Send, error: GatewayError) -> None:
    body = error.body().model_dump_json().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Rejects request bodies over `limit` bytes with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                await _send_error(send, _too_large(self.limit))
                return
            await self.app(scope, receive, send)
            return
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            await self.app(scope, receive, send)
            return
        # Chunked: read the whole body (up to the limit) first, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_error(send, _too_large(self.limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
