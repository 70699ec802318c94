"""Server interceptors every textserve server gets (bearer-token auth when enabled)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from textserve.core.config import ServerConfig

_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _load_tokens(config: ServerConfig) -> list[bytes]:
    tokens = [token.get_secret_value().encode() for token in config.auth.tokens]
    if config.auth.tokens_file is not None:
        for line in config.auth.tokens_file.read_text().splitlines():
            if line.strip():
                tokens.append(line.strip().encode())
    return tokens


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>`; health and reflection stay open for probes."""

    def __init__(self, tokens: list[bytes]) -> None:
        if not tokens:
            raise ValueError("server.auth.enabled=true needs server.auth.tokens or server.auth.tokens_file")
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if method.startswith(_OPEN_METHODS):
            return await continuation(handler_call_details)
        header = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
        if not header.startswith("Bearer ") or not header[7:].strip():
            return _deny(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token (authorization: Bearer <token>)")
        offered = header[7:].strip().encode()
        if not any(hmac.compare_digest(offered, token) for token in self._tokens):
            return _deny(grpc.StatusCode.PERMISSION_DENIED, "bearer token not accepted")
        return await continuation(handler_call_details)


def build_interceptors(service: str, config: ServerConfig) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors for one server, from its config."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if config.auth.enabled:
        interceptors.append(BearerTokenInterceptor(_load_tokens(config)))
    return interceptors
