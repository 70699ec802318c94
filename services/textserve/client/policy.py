"""How the public client calls: options, its long-lived channels, retries and deadlines.

`ClientOptions` holds everything a caller may set. `open_public_channel` opens one channel per
target (round_robin over every address the name resolves to, keepalive, TLS from
client/channels.py) with a gRPC service config whose retry policy retries UNAVAILABLE and
RESOURCE_EXHAUSTED with exponential backoff, honouring the server's `grpc-retry-pushback-ms`
(transport/status.py), under retry throttling. `call_unary` adds the bearer token and the
deadline to one call and, past gRPC's few attempts, keeps retrying those two codes with
jittered backoff (or the server's pushback) while the caller's deadline allows, so a server
restarting within the deadline is invisible to the caller. Failures are raised as the error
kinds of core/errors.py (`from_rpc_error`: an InvalidInput keeps the field of the server's
BadRequest detail), with the gRPC error as `__cause__`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from textserve.client.channels import client_credentials
from textserve.client.tokens import read_token_file
from textserve.core.config import TlsConfig
from textserve.core.errors import DeadlineExceeded
from textserve.transport.status import from_rpc_error, retry_pushback_ms

Resp = TypeVar("Resp")

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
"""Codes retried (by gRPC's retry policy, then by `call_unary` within the deadline)."""

SERVICES = (
    "textserve.v1.EmbeddingService",
    "textserve.v1.ClassifierService",
    "textserve.v1.TokenizerService",
    "textserve.v1.GenerationService",
)


@dataclass(frozen=True)
class ClientOptions:
    """Options of a textserve client (every field has a working default for a local server)."""

    timeout_s: float = 30.0
    """Deadline of a call that gives none."""
    token: str | None = None
    """Bearer token sent with every call (`authorization: Bearer <token>`)."""
    token_file: Path | None = None
    """File holding the bearer token, read once when the client opens (when `token` is None)."""
    tls: TlsConfig | None = None
    """TLS / mutual TLS (`TlsConfig(enabled=True, ca_file=..., cert_file=..., key_file=...)`)."""
    wait_for_ready: bool = True
    """Calls wait (within their deadline) for a server that is down or restarting instead of
    failing at once with UNAVAILABLE."""
    retry: bool = True
    """Retry UNAVAILABLE and RESOURCE_EXHAUSTED with backoff and the server's pushback."""
    retry_within_deadline: bool = True
    """After gRPC's attempts, keep retrying those codes until the deadline (off: fail after them)."""
    max_attempts: int = 5
    """Attempts of gRPC's retry policy per call (2..5); `call_unary` retries on within the deadline."""
    initial_backoff_s: float = 0.05
    """First retry backoff (doubled each attempt, jittered, capped by max_backoff_s)."""
    max_backoff_s: float = 2.0
    """Longest backoff between attempts."""
    merge: bool = True
    """Merge concurrent single-text embed/classify calls of this process into one call."""
    merge_max_texts: int = 64
    """Most texts in one merged call (keep it at most the server's limits.max_texts_per_request)."""
    merge_max_wait_s: float = 0.001
    """Longest a single-text call waits for others to share its call while one is in flight."""
    keepalive_time_ms: int = 30_000
    """HTTP/2 keepalive ping interval on idle connections."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest message sent or received."""
    channel_options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    """Extra gRPC channel options (appended last, so they win)."""

    def resolved_token(self) -> str | None:
        """`token`, else the contents of `token_file`, else None."""
        if self.token:
            return self.token
        if self.token_file is not None:
            return read_token_file(self.token_file) or None
        return None


def service_config(options: ClientOptions) -> str:
    """The gRPC service config: round_robin, and the retry policy of every textserve service."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if options.retry:
        config["methodConfig"] = [
            {
                "name": [{"service": name} for name in SERVICES],
                "retryPolicy": {
                    "maxAttempts": max(2, min(5, options.max_attempts)),
                    "initialBackoff": f"{options.initial_backoff_s:.3f}s",
                    "maxBackoff": f"{options.max_backoff_s:.3f}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": [code.name for code in RETRYABLE],
                },
            }
        ]
        # Retries stop while most calls fail (a server down for long): no retry storm.
        config["retryThrottling"] = {"maxTokens": 100, "tokenRatio": 0.1}
    return json.dumps(config)


def public_channel_options(options: ClientOptions) -> list[tuple[str, Any]]:
    """Channel options of the public client."""
    return [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.keepalive_time_ms", options.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.enable_retries", 1 if options.retry else 0),
        ("grpc.service_config", service_config(options)),
        *options.channel_options,
    ]


def open_public_channel(address: str, options: ClientOptions) -> grpc.aio.Channel:
    """One long-lived asyncio channel to `address` (`host:port`, `dns:///name:port`)."""
    channel_options = public_channel_options(options)
    tls = options.tls
    if tls is not None and tls.enabled:
        if tls.server_name_override:
            channel_options.append(("grpc.ssl_target_name_override", tls.server_name_override))
        return grpc.aio.secure_channel(address, client_credentials(tls), options=channel_options)
    return grpc.aio.insecure_channel(address, options=channel_options)


def deadline_of(timeout_s: float | None, options: ClientOptions) -> float:
    """Absolute time.monotonic() deadline of a call given `timeout_s` (None: the default)."""
    return time.monotonic() + (options.timeout_s if timeout_s is None else timeout_s)


def _backoff(attempt: int, options: ClientOptions) -> float:
    """Full-jitter exponential backoff of retry `attempt` (0-based)."""
    return random.uniform(0.0, min(options.max_backoff_s, options.initial_backoff_s * 2**attempt))


class CallPolicy:
    """Token, deadline and retries of the calls of one client."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        token = options.resolved_token()
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    async def call_unary(
        self, rpc: Callable[..., Awaitable[Resp]], request: Any, deadline: float, what: str
    ) -> Resp:
        """Calls `rpc` by `deadline`, retrying retryable failures while the deadline allows."""
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{what}: deadline exceeded before the call could be made")
            try:
                return await rpc(
                    request,
                    timeout=remaining,
                    metadata=self.metadata,
                    wait_for_ready=self.options.wait_for_ready,
                )
            except grpc.aio.AioRpcError as error:
                pause = self.retry_pause(error, attempt, deadline)
                if pause is None:
                    raise from_rpc_error(error) from error
            await asyncio.sleep(pause)
            attempt += 1

    def retry_pause(self, error: grpc.aio.AioRpcError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before retrying `error`, or None when it is not retried (not
        retryable, retries off, or the deadline would pass)."""
        if not (self.options.retry and self.options.retry_within_deadline) or error.code() not in RETRYABLE:
            return None
        pushback = retry_pushback_ms(error)
        pause = pushback / 1000.0 if pushback is not None else _backoff(attempt, self.options)
        if time.monotonic() + pause >= deadline:
            return None
        return pause
