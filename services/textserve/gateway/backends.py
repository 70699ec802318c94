"""The gateway's long-lived gRPC channels to the services: calls, health and served model names.

One channel per configured service, opened at start-up and shared by every request (gRPC
multiplexes them over HTTP/2). Every call goes through the upstream-call helper of
textserve/client/ (time left of the request's deadline, metadata, error kinds, counted in
textserve_upstream_requests_total with its status); its errors become GatewayErrors here.
A service whose address is empty is not configured: its endpoints answer 404. Served model
names come from the services' Info RPCs and are cached.

Why `client.upstream` and not the public `AsyncTextserveClient`: each HTTP request is its own
call with its own identity (the caller's `x-request-id`, which feedback and the payload log
join on, and with `forward_authorization` the caller's own token), which the public client's
merging of concurrent single-text calls would mix into one RPC; overload is the HTTP caller's
to retry (429/503 with Retry-After), not retried inside the gateway, which would multiply load
in a burst; and every call is counted in the upstream metrics with field names renamed to
the OpenAI `param`. Channels, TLS, tokens and error kinds are the client package's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from textserve.client import upstream
from textserve.client.channels import open_channel
from textserve.client.tokens import resolve_token
from textserve.core.errors import TextserveError
from textserve.gateway.calls import CallOptions
from textserve.gateway.config import GatewayConfig
from textserve.gateway.errors import GatewayError, Renamer, http_error
from textserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE = "gateway"
"""`service` label of the gateway's metrics."""

BackendKind = Literal["embedding", "generation", "classifier"]
T = TypeVar("T")

_SERVICE_NAMES: dict[BackendKind, str] = {
    "embedding": embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
    "generation": generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
    "classifier": classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"].full_name,
}
_MODEL_REFRESH_S = 5.0
"""Least time between two Info calls made because a request named an unknown model."""
_INFO_TIMEOUT_S = 5.0
"""Deadline of the Info calls behind GET /v1/models."""


@contextlib.contextmanager
def _http_errors(rename: Renamer | None, kind: BackendKind) -> Iterator[None]:
    """Re-raises the error kinds of a backend call as GatewayError."""
    try:
        yield
    except TextserveError as error:
        raise http_error(error, rename, kind) from None


def _label(kind: BackendKind, method: str) -> str:
    """`method` label of a call's metrics (`EmbeddingService/Embed`)."""
    return f"{_SERVICE_NAMES[kind].rsplit('.', 1)[-1]}/{method}"


@dataclass
class Backend:
    """One configured service."""

    kind: BackendKind
    address: str
    channel: grpc.aio.Channel
    stub: Any
    model: str | None = None
    """Served model name, once an Info call has answered."""
    model_fetched: float = 0.0


class UpstreamStream:
    """A server-streaming call: `read()` gives messages until None; a failure raises GatewayError."""

    def __init__(self, stream: upstream.UpstreamStream, rename: Renamer | None, kind: str) -> None:
        self._stream = stream
        self._rename = rename
        self._kind = kind
        self._primed: list[Any] = []
        self._eof = False

    async def prime(self) -> None:
        """Reads the first message now, so that a rejected request fails before any HTTP byte is sent."""
        message = await self.read()
        if message is None:
            self._eof = True
        else:
            self._primed.append(message)

    async def read(self) -> Any | None:
        """The next message, or None when the stream ended; a failure raises GatewayError."""
        if self._primed:
            return self._primed.pop()
        if self._eof:
            return None
        try:
            message = await self._stream.read()
        except TextserveError as error:
            raise http_error(error, self._rename, self._kind) from None
        if message is None:
            self._eof = True
        return message

    def cancel(self) -> None:
        """Cancels the call (the service frees its work at once); no-op once it ended."""
        self._stream.cancel()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not None:
            yield message


class Backends:
    """Channels, stubs, health and model names of the services the gateway fronts."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._backends: dict[BackendKind, Backend] = {}
        self._addresses: dict[BackendKind, str] = {
            "embedding": config.embedding_address,
            "generation": config.generation_address,
            "classifier": config.classifier_address,
        }

    @property
    def configured(self) -> list[BackendKind]:
        """Services with an address, in a stable order."""
        return [kind for kind, address in self._addresses.items() if address]

    async def open(self) -> None:
        """Opens one channel per configured service and starts connecting."""
        stubs = {
            "embedding": embedding_pb2_grpc.EmbeddingServiceStub,
            "generation": generation_pb2_grpc.GenerationServiceStub,
            "classifier": classifier_pb2_grpc.ClassifierServiceStub,
        }
        for kind in self.configured:
            address = self._addresses[kind]
            token = resolve_token(self.config.client_token, self.config.client_token_file)
            channel = open_channel(address, self.config.client, token=token)
            channel.get_state(try_to_connect=True)
            self._backends[kind] = Backend(kind, address, channel, stubs[kind](channel))
            log.info("backend channel opened", extra={"backend": kind, "address": address})

    async def close(self) -> None:
        """Closes every channel (in-flight calls are cancelled)."""
        for backend in self._backends.values():
            await backend.channel.close(None)
        self._backends.clear()

    def get(self, kind: BackendKind) -> Backend:
        """The backend, or 404 when its address is not configured."""
        backend = self._backends.get(kind)
        if backend is None:
            raise GatewayError(
                404,
                f"this gateway has no {kind} service (gateway.{kind}_address is empty)",
                "not_found_error",
                code="endpoint_not_configured",
            )
        return backend

    def _begin(
        self, call: Callable[..., T], kind: BackendKind, method: str, request: Any, options: CallOptions
    ) -> T:
        """Starts `call` (upstream.unary_call or stream_call) on the backend's stub method."""
        return call(
            getattr(self.get(kind).stub, method),
            request,
            service=SERVICE,
            method=_label(kind, method),
            deadline=options.deadline,
            metadata=options.metadata,
        )

    async def unary(
        self,
        kind: BackendKind,
        method: str,
        request: Any,
        options: CallOptions,
        rename: Renamer | None = None,
    ) -> Any:
        """Calls a unary RPC with the request's deadline and metadata; failures raise GatewayError."""
        with _http_errors(rename, kind):
            return await self._begin(upstream.unary_call, kind, method, request, options)

    def stream(
        self,
        kind: BackendKind,
        method: str,
        request: Any,
        options: CallOptions,
        rename: Renamer | None = None,
    ) -> UpstreamStream:
        """Starts a server-streaming RPC with the request's deadline and metadata."""
        with _http_errors(rename, kind):
            stream = self._begin(upstream.stream_call, kind, method, request, options)
        return UpstreamStream(stream, rename, kind)

    # --- health ---------------------------------------------------------------------------
    async def _health_of(self, backend: Backend) -> str:
        stub = health_pb2_grpc.HealthStub(backend.channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=_SERVICE_NAMES[backend.kind]),
                timeout=self.config.health_timeout_s,
                wait_for_ready=False,
            )
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def health(self) -> dict[str, str]:
        """grpc.health.v1 status of each configured service (SERVING, NOT_SERVING, UNAVAILABLE, ...)."""
        backends = list(self._backends.values())
        statuses = await asyncio.gather(*(self._health_of(b) for b in backends))
        return {b.kind: status for b, status in zip(backends, statuses, strict=True)}

    # --- models ---------------------------------------------------------------------------
    async def model_name(self, kind: BackendKind, options: CallOptions, refresh: bool = False) -> str:
        """The service's model name (cached; fetched with Info when unknown or on refresh)."""
        backend = self.get(kind)
        if backend.model is not None and not refresh:
            return backend.model
        if kind == "embedding":
            info = await self.unary(kind, "Info", embedding_pb2.InfoRequest(), options)
        else:
            info = await self.unary(kind, "GenerationInfo", generation_pb2.GenerationInfoRequest(), options)
        backend.model = str(info.model.name)
        backend.model_fetched = time.monotonic()
        return backend.model

    async def check_model(self, kind: BackendKind, requested: str, options: CallOptions) -> str:
        """The served model name when `requested` names it; else 404 model_not_found."""
        name = await self.model_name(kind, options)
        if requested == name:
            return name
        backend = self.get(kind)
        if time.monotonic() - backend.model_fetched > _MODEL_REFRESH_S:
            name = await self.model_name(kind, options, refresh=True)
            if requested == name:
                return name
        raise GatewayError(
            404,
            f"model: the model {requested!r} does not exist on this {kind} endpoint; it serves {name!r}",
            "not_found_error",
            param="model",
            code="model_not_found",
        )

    async def served_models(self, options: CallOptions) -> list[tuple[BackendKind, str]]:
        """(kind, model name) of every configured service that answers Info within a few seconds."""
        short = CallOptions(min(options.deadline, time.monotonic() + _INFO_TIMEOUT_S), options.metadata)

        async def one(kind: BackendKind) -> str | None:
            try:
                return await self.model_name(kind, short, refresh=True)
            except GatewayError:
                return None

        kinds = [kind for kind in self.configured if kind != "classifier"]  # OpenAI models only
        names = await asyncio.gather(*(one(kind) for kind in kinds))
        return [(kind, name) for kind, name in zip(kinds, names, strict=True) if name is not None]
