"""Helpers for the gateway tests: a gateway on a free loopback port, and openai clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from openai import AsyncOpenAI
from textserve.gateway.config import GatewayConfig
from textserve.gateway.server import GatewayServer


def gateway_config(**overrides: Any) -> GatewayConfig:
    """A gateway on 127.0.0.1 (free port) with no backends unless given, and a short grace period."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "grace_period_s": 1.0,
        "embedding_address": "",
        "generation_address": "",
    }
    values.update(overrides)
    return GatewayConfig(**values)


@asynccontextmanager
async def running_gateway(**overrides: Any) -> AsyncIterator[GatewayServer]:
    """A started gateway (uvicorn in this event loop), stopped on exit."""
    server = GatewayServer(gateway_config(**overrides))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def base_url(server: GatewayServer) -> str:
    """http://127.0.0.1:<port> of a started gateway."""
    return f"http://127.0.0.1:{server.port}"


def openai_client(server: GatewayServer, api_key: str = "test-key", **options: Any) -> AsyncOpenAI:
    """The official openai client pointed at the gateway, without retries."""
    return AsyncOpenAI(base_url=f"{base_url(server)}/v1", api_key=api_key, max_retries=0, **options)
