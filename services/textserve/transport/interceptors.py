"""Server interceptors every textserve server gets: bearer-token auth, admission, the RPC deadline context.

`DeadlineInterceptor` records each RPC's deadline (transport/deadlines.py) so calls this server
makes to other services inherit it. `BearerTokenInterceptor` requires
`authorization: Bearer <token>` on every RPC kind (unary and streaming) except health
checks and reflection, which Kubernetes probes and tooling call without credentials: no
token -> UNAUTHENTICATED, a token not accepted -> PERMISSION_DENIED. Accepted tokens come
from the config and/or a file mounted from a Secret; the file is re-read when it changes,
so a rotated Secret takes effect without a restart. Tokens are compared as SHA-256 digests
in constant time and are never logged. The model-control RPCs (textserve.v1.ModelControl and the
Open Inference Protocol repository extension) need a token with the admin role
(`server.auth.admin_tokens` / `admin_tokens_file`): any other token gets PERMISSION_DENIED there;
admin tokens are accepted on every other RPC too.

`AdmissionInterceptor` bounds the calls one server handles at once: it counts the calls of
the service's methods in flight (health checks and reflection are not counted) and refuses a
call at once when `server.max_in_flight_requests` are already in flight: RESOURCE_EXHAUSTED
with a message naming the bound and a `grpc-retry-pushback-ms` trailer (gRPC retry policies
retry it after that long), counted in textserve_requests_refused_total{reason="in_flight"}
and textserve_requests_total. A refusal decodes no request. It also sets the pushback the
call's other refusals carry (a full batch queue: Overloaded, reason queue_full, counted by
the RPC boundary, transport/rpc.py). Every call the server does not serve in a burst is
thereby refused by textserve, with a reason, rather than dropped by grpc:
`transport/server.grpc_options` raises grpc's own backlog of calls not yet taken up by the
event loop (`server.max_pending_calls`; over it grpc answers a bare CANCELLED) and makes
grpc count HTTP/2 streams as the client does (so a client holds streams over
`max_concurrent_streams` back instead of having them refused).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from textserve.core import metrics
from textserve.core.config import ServerConfig, default_in_flight
from textserve.core.errors import Overloaded, PermissionDenied, TextserveError, Unauthenticated
from textserve.transport.deadlines import set_current_deadline
from textserve.transport.status import abort, set_retry_pushback_ms, status_of

log = logging.getLogger(__name__)

OPEN_METHOD_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Methods served without a token (Kubernetes gRPC probes, grpcurl/reflection)."""

CONTROL_METHOD_PREFIXES: tuple[str, ...] = (
    "/textserve.v1.ModelControl/",
    "/inference.GRPCInferenceService/Repository",
)
"""Methods that load, unload or reroute models: admin tokens only when auth is on."""

TOKENS_FILE_RECHECK_S = 2.0
"""How often (at most) the tokens file's modification time is checked."""

# grpc returns None from the continuation for unknown methods (-> UNIMPLEMENTED); the stubs say otherwise.
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


def is_open_method(method: str) -> bool:
    """True for methods that never need a token."""
    return method.startswith(OPEN_METHOD_PREFIXES)


def is_control_method(method: str) -> bool:
    """True for the model-control methods (admin role)."""
    return method.startswith(CONTROL_METHOD_PREFIXES)


def _digest(token: str | bytes) -> bytes:
    data = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(data).digest()


def rebuild_handler(
    handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any], *, decode: bool = True
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and (de)serializers as `handler`, running `behaviour`;
    with decode=False the request reaches it as raw bytes (nothing is parsed)."""
    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer if decode else None,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour, **kwargs)
    return grpc.unary_unary_rpc_method_handler(behaviour, **kwargs)


def behaviour_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any] | None:
    if handler.request_streaming and handler.response_streaming:
        return handler.stream_stream  # type: ignore[no-any-return]
    if handler.request_streaming:
        return handler.stream_unary  # type: ignore[no-any-return]
    if handler.response_streaming:
        return handler.unary_stream  # type: ignore[no-any-return]
    return handler.unary_unary  # type: ignore[no-any-return]


def deny_handler(handler: grpc.RpcMethodHandler, error: TextserveError) -> grpc.RpcMethodHandler:
    """A handler of the same RPC kind as `handler` that only aborts with `error`'s status.

    The request is not decoded (raw bytes), so a rejected client costs no parsing.
    """

    async def reject(request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort(context, error)

    return rebuild_handler(handler, reject, decode=False)


class WrappedHandlers:
    """Wrapped handlers kept per (method, inner handler): a method's handler is wrapped once,
    not on every call (the per-call cost of an interceptor is then one dict lookup). Bounded:
    past `limit` entries (handlers that are not stable objects) wrapping is done per call."""

    def __init__(self, limit: int = 1024) -> None:
        self._wrapped: dict[tuple[str, int], tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._limit = limit

    def get(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        found = self._wrapped.get((method, id(handler)))
        # The inner handler is kept with its wrapper, so its id is not reused while cached.
        return found[1] if found is not None and found[0] is handler else None

    def put(
        self, method: str, handler: grpc.RpcMethodHandler, wrapped: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        if len(self._wrapped) < self._limit:
            self._wrapped[(method, id(handler))] = (handler, wrapped)
        return wrapped


class DeadlineInterceptor(grpc.aio.ServerInterceptor):
    """Records each RPC's absolute deadline for the calls it makes (transport/deadlines.py)."""

    def __init__(self) -> None:
        self._handlers = WrappedHandlers()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method or ""
        if handler is None or is_open_method(full_method):
            return handler
        cached = self._handlers.get(full_method, handler)
        if cached is not None:
            return cached
        return self._handlers.put(full_method, handler, self._wrap(handler))

    @staticmethod
    def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behaviour = behaviour_of(handler)
        if behaviour is None:
            return handler
        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                _record_deadline(context)
                inner = behaviour(request, context)
                try:
                    async for item in inner:
                        yield item
                finally:  # closing this generator closes the servicer's at once (its cleanup runs now)
                    await inner.aclose()

            return rebuild_handler(handler, streaming)
        if inspect.iscoroutinefunction(behaviour):

            async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _record_deadline(context)
                return await behaviour(request, context)

            return rebuild_handler(handler, single)
        return handler


def _record_deadline(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    set_current_deadline(None if remaining is None else time.monotonic() + float(remaining))


class TokenSet:
    """Accepted tokens (as digests): the configured ones plus a file re-read when it changes."""

    def __init__(
        self,
        tokens: Sequence[str | bytes] = (),
        tokens_file: Path | None = None,
        *,
        setting: str = "server.auth.tokens",
    ) -> None:
        self._static = [_digest(token) for token in tokens if token]
        self._file = tokens_file
        self._file_digests: list[bytes] = []
        self._file_mtime: int | None = None
        self._next_check = 0.0
        if tokens_file is not None:
            if not tokens_file.is_file():
                raise ValueError(f"{setting}_file={tokens_file} does not exist")
            self._reload()
        if not self._static and not self._file_digests:
            raise ValueError(f"server.auth.enabled=true needs {setting} or a non-empty {setting}_file")

    def _reload(self) -> None:
        assert self._file is not None
        try:
            stat = self._file.stat()
            if stat.st_mtime_ns == self._file_mtime:
                return
            lines = self._file.read_text().splitlines()
        except OSError as exc:  # a Secret update swaps symlinks; keep the old tokens meanwhile
            log.warning(
                "could not read the tokens file; keeping the previous tokens",
                extra={"error": type(exc).__name__},
            )
            return
        self._file_digests = [_digest(line.strip()) for line in lines if line.strip()]
        self._file_mtime = stat.st_mtime_ns
        log.info("bearer tokens loaded", extra={"count": len(self._file_digests) + len(self._static)})

    def accepts(self, token: str) -> bool:
        """True when `token` is one of the accepted tokens (constant time over all of them)."""
        if self._file is not None and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + TOKENS_FILE_RECHECK_S
            self._reload()
        offered = _digest(token)
        found = False
        for accepted in (*self._static, *self._file_digests):
            found |= hmac.compare_digest(offered, accepted)
        return found


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        header = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires a bearer token on every RPC kind; health and reflection stay open for probes."""

    def __init__(self, tokens: TokenSet | None, service: str = "", admin: TokenSet | None = None) -> None:
        """`tokens`: accepted on every RPC but the control ones; `admin`: accepted everywhere
        (None: nobody may call the control RPCs)."""
        self._tokens = tokens
        self._service = service
        self._admin = admin

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        handler = await continuation(handler_call_details)
        if handler is None or is_open_method(method):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return self._deny(
                handler,
                method,
                Unauthenticated("missing bearer token (metadata authorization: Bearer <token>)"),
            )
        admin = self._admin is not None and self._admin.accepts(token)
        if is_control_method(method):
            if not admin:
                return self._deny(
                    handler,
                    method,
                    PermissionDenied("model-control RPCs need a token with the admin role"),
                )
            return handler
        if not admin and (self._tokens is None or not self._tokens.accepts(token)):
            return self._deny(handler, method, PermissionDenied("bearer token not accepted"))
        return handler

    def _deny(
        self, handler: grpc.RpcMethodHandler, method: str, error: TextserveError
    ) -> grpc.RpcMethodHandler:
        code = status_of(error)
        metrics.AUTH_FAILURES.labels(service=self._service, code=code.name).inc()
        log.debug(
            "rpc rejected by auth", extra={"service": self._service, "method": method, "code": code.name}
        )
        return deny_handler(handler, error)


IN_FLIGHT = "in_flight"
"""Refusal reason: the admission bound (server.max_in_flight_requests)."""
QUEUE_FULL = "queue_full"
"""Refusal reason: a full batch or generation queue (Overloaded from the service)."""


def method_name(full_method: str) -> str:
    """`Embed` of `/textserve.v1.EmbeddingService/Embed` (the `method` label of the metrics)."""
    return full_method.rsplit("/", 1)[-1]


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls over `max_in_flight` at once with RESOURCE_EXHAUSTED and retry guidance."""

    def __init__(self, service: str, max_in_flight: int, retry_pushback_ms: int) -> None:
        self.service = service
        self.max_in_flight = max_in_flight
        self.retry_pushback_ms = retry_pushback_ms
        self.in_flight = 0
        self._refusals: dict[str, tuple[Any, Any]] = {}
        self._handlers = WrappedHandlers()

    @classmethod
    def from_config(cls, service: str, config: ServerConfig) -> AdmissionInterceptor:
        """The interceptor of one server from its config."""
        bound = config.max_in_flight_requests or default_in_flight(None)  # set by the service's config
        return cls(service, bound, config.retry_pushback_ms)

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"server busy: {self.in_flight} calls in flight, "
            f"server.max_in_flight_requests={self.max_in_flight}; retry with backoff"
        )

    def _count_refusal(self, method: str) -> None:
        counters = self._refusals.get(method)
        if counters is None:
            counters = (
                metrics.REQUESTS_REFUSED.labels(service=self.service, method=method, reason=IN_FLIGHT),
                metrics.REQUESTS.labels(
                    service=self.service, method=method, code=grpc.StatusCode.RESOURCE_EXHAUSTED.name
                ),
            )
            self._refusals[method] = counters
        counters[0].inc()
        counters[1].inc()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method or ""
        if handler is None or is_open_method(full_method):
            return handler
        behaviour = behaviour_of(handler)
        if behaviour is None:
            return handler
        method = method_name(full_method)
        if self.in_flight >= self.max_in_flight:  # refused before the request is even decoded
            set_retry_pushback_ms(self.retry_pushback_ms)
            self._count_refusal(method)
            return deny_handler(handler, self._overloaded())
        cached = self._handlers.get(full_method, handler)
        if cached is not None:
            return cached
        if inspect.isasyncgenfunction(behaviour):
            wrapped = rebuild_handler(handler, self._streaming(behaviour, method))
        elif inspect.iscoroutinefunction(behaviour):
            wrapped = rebuild_handler(handler, self._single(behaviour, method))
        else:
            return handler
        return self._handlers.put(full_method, handler, wrapped)

    async def _enter(self, context: grpc.aio.ServicerContext, method: str) -> None:
        """Takes an in-flight slot, or aborts with RESOURCE_EXHAUSTED. Checked again here (not
        only in intercept_service): calls admitted together may have filled the bound meanwhile."""
        set_retry_pushback_ms(self.retry_pushback_ms)
        if self.in_flight >= self.max_in_flight:
            self._count_refusal(method)
            await abort(context, self._overloaded())
        self.in_flight += 1

    def _single(self, behaviour: Any, method: str) -> Any:
        async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._enter(context, method)
            try:
                return await behaviour(request, context)
            finally:
                self.in_flight -= 1

        return single

    def _streaming(self, behaviour: Any, method: str) -> Any:
        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._enter(context, method)
            try:
                inner = behaviour(request, context)
                try:
                    async for item in inner:
                        yield item
                finally:  # closing this generator closes the servicer's at once
                    await inner.aclose()
            finally:
                self.in_flight -= 1

        return streaming


def build_interceptors(service: str, config: ServerConfig) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors for one server, from its config: auth first (a call without a valid token
    takes no admission slot), then admission, then the deadline context."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    auth = config.auth
    if auth.enabled:
        admin = None
        if auth.admin_tokens or auth.admin_tokens_file is not None:
            admin = TokenSet(
                [t.get_secret_value() for t in auth.admin_tokens],
                auth.admin_tokens_file,
                setting="server.auth.admin_tokens",
            )
        tokens = None
        if admin is None or auth.tokens or auth.tokens_file is not None:
            tokens = TokenSet([t.get_secret_value() for t in auth.tokens], auth.tokens_file)
        interceptors.append(BearerTokenInterceptor(tokens, service, admin))
    interceptors.append(AdmissionInterceptor.from_config(service, config))
    interceptors.append(DeadlineInterceptor())
    return interceptors
