"""gRPC channels to textserve services: TLS / mutual TLS, bearer token, inherited deadline.

`open_channel(address, client_config, token=...)` returns an asyncio channel whose every
call (unary or streaming)
- carries `authorization: Bearer <token>` when a token is given (see client/tokens.py),
- gets a deadline: the call's own timeout, else `client.timeout_s`, capped by what the RPC
  being served has left (`time_left` of transport/deadlines.py), so deadlines hold end to
  end across services,
- fails fast with UNAVAILABLE while the other service is down (no wait-for-ready, no
  retries) and reconnects with a short backoff once it is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from pydantic import SecretStr

from textserve.core.config import ClientConfig, TlsConfig
from textserve.core.errors import DeadlineExceeded
from textserve.transport.deadlines import MIN_TIMEOUT_S, time_left


def channel_options(max_message_bytes: int = 64 * 1024 * 1024) -> list[tuple[str, Any]]:
    """Options of every client channel: message limits, keepalive, short reconnect backoff, no retries."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.enable_retries", 0),
        # Headless Services resolve to every pod: spread calls over all of them.
        ("grpc.lb_policy_name", "round_robin"),
    ]


def client_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """TLS credentials of a client from PEM files; a client certificate makes it mutual TLS."""
    root = tls.ca_file.read_bytes() if tls.ca_file else None
    key = tls.key_file.read_bytes() if tls.key_file else None
    cert = tls.cert_file.read_bytes() if tls.cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)


class _CallPolicy:
    """Adds the bearer token and the inherited deadline to the details of one outgoing call."""

    def __init__(self, token: str | None, default_timeout_s: float | None) -> None:
        self._auth: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._default_timeout = default_timeout_s

    def _timeout(self, explicit: float | None) -> float | None:
        deadline = None if explicit is None else time.monotonic() + explicit
        try:
            return time_left(deadline, self._default_timeout)
        except DeadlineExceeded:  # the caller's deadline passed: the call fails at once
            return MIN_TIMEOUT_S

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = details.metadata
        if self._auth and not any(key == "authorization" for key, _ in metadata or ()):
            metadata = grpc.aio.Metadata(*(metadata or ()), *self._auth)
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=self._timeout(details.timeout),
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


class _Forwarding:
    """Forwards a call of any kind with the details of the channel's policy."""

    def __init__(self, policy: _CallPolicy) -> None:
        self._policy = policy

    async def _forward(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._policy.details(client_call_details), request)

    async def _forward_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self._forward(continuation, client_call_details, request_iterator)


class _UnaryUnary(_Forwarding, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _Forwarding._forward


class _UnaryStream(_Forwarding, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _Forwarding._forward


class _StreamUnary(_Forwarding, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _Forwarding._forward_stream


class _StreamStream(_Forwarding, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _Forwarding._forward_stream


def client_interceptors(token: str | None, default_timeout_s: float | None) -> list[Any]:
    """The interceptors of an inter-service channel (token + deadline on every call kind)."""
    policy = _CallPolicy(token, default_timeout_s)
    return [_UnaryUnary(policy), _UnaryStream(policy), _StreamUnary(policy), _StreamStream(policy)]


def open_channel(
    address: str,
    config: ClientConfig | None = None,
    *,
    token: str | SecretStr | None = None,
    default_timeout: bool = True,
) -> grpc.aio.Channel:
    """An asyncio channel to `address` (host:port) with TLS, token and deadlines from config.

    `token` is sent as a bearer token (`client_token(server_config.auth)` of client/tokens.py). With
    `default_timeout`, calls without a timeout get `config.timeout_s`; set it False for
    long-lived streams. The inherited deadline of the RPC being served always applies.
    """
    config = config or ClientConfig()
    secret = token.get_secret_value() if isinstance(token, SecretStr) else token
    options = channel_options()
    interceptors = client_interceptors(secret or None, config.timeout_s if default_timeout else None)
    if config.tls.enabled:
        if config.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", config.tls.server_name_override))
        return grpc.aio.secure_channel(
            address, client_credentials(config.tls), options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
