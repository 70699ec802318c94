"""gRPC channels to other textserve services (TLS / mutual TLS and bearer token from config)."""

from __future__ import annotations

from typing import Any

import grpc

from textserve.core.config import ClientConfig, TlsConfig


def channel_options(max_message_bytes: int = 64 * 1024 * 1024) -> list[tuple[str, Any]]:
    """Options of every client channel: message limits, keepalive, retries on UNAVAILABLE off."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.enable_retries", 0),
    ]


def client_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """TLS credentials of a client; a client certificate makes it mutual TLS."""
    root = tls.ca_file.read_bytes() if tls.ca_file else None
    key = tls.key_file.read_bytes() if tls.key_file else None
    cert = tls.cert_file.read_bytes() if tls.cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)


def open_channel(address: str, config: ClientConfig | None = None) -> grpc.aio.Channel:
    """An asyncio channel to `address` (host:port)."""
    config = config or ClientConfig()
    options = channel_options()
    if config.tls.enabled:
        if config.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", config.tls.server_name_override))
        return grpc.aio.secure_channel(address, client_credentials(config.tls), options=options)
    return grpc.aio.insecure_channel(address, options=options)
