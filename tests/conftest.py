"""Shared fixtures: real gRPC servers on loopback, real models (loaded once per session)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from textserve.transport.server import ServiceHost

from tests.support import ONNX_CACHE, embedding_config, start_host

if TYPE_CHECKING:
    from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def onnx_cache_dir() -> Path:
    """Exported graphs shared by every test (the export runs once per machine)."""
    ONNX_CACHE.mkdir(parents=True, exist_ok=True)
    return ONNX_CACHE


@pytest.fixture(scope="session")
async def embedding_host(onnx_cache_dir: Path) -> AsyncIterator[ServiceHost]:
    """An embedding service (onnxruntime, in-memory cache) on a free loopback port."""
    from textserve.embedding.app import EmbeddingApp

    config = embedding_config()
    host = await start_host([EmbeddingApp(config)])
    yield host
    await host.stop(grace=1.0)


@pytest.fixture(scope="session")
def embedding_address(embedding_host: ServiceHost) -> str:
    """host:port of the session's embedding service."""
    return f"127.0.0.1:{embedding_host.port_of('embedding')}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the session's own on a free loopback port (no persistence).

    Shared: use a unique key prefix per test module, and never kill it (start your own
    `tests.redis_server.RedisServer` for that). Skips when redis-server is not installed.
    """
    from tests.redis_server import RedisServer, redis_available

    if not redis_available():
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.stop()
