"""Helpers for tests: configs bound to loopback with free ports, and a host starter."""

from __future__ import annotations

import hashlib
import inspect
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textserve.core.config import BatcherConfig, ModelConfig, ServerConfig
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.transport.server import ServiceApp, ServiceHost


def export_code_hash() -> str:
    """A hash of the code that builds and exports the ONNX graph (pooling wrapper, export call,
    cache path, opset): part of the tests' cache directory, so a change to pooling or export
    never passes locally on a graph exported by the previous code."""
    from textserve.runtime import encoder

    parts = [
        inspect.getsource(f) for f in (encoder._torch_module, encoder.export_onnx, encoder.onnx_cache_path)
    ]
    parts.append(f"opset{encoder.ONNX_OPSET}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


ONNX_CACHE = Path.home() / ".cache" / "textserve" / "onnx-tests" / export_code_hash()
"""Exported graphs of the tests, one directory per version of the export code (see above)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loopback_server(**overrides: Any) -> ServerConfig:
    """A server config on 127.0.0.1 with an OS-chosen port and a short grace period."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "grace_period_s": 2.0}
    values.update(overrides)
    return ServerConfig(**values)


def model_config(**overrides: Any) -> ModelConfig:
    """The default model with the tests' ONNX cache."""
    values: dict[str, Any] = {"onnx_cache_dir": ONNX_CACHE}
    values.update(overrides)
    return ModelConfig(**values)


def embedding_config(
    batcher: BatcherConfig | None = None, model: ModelConfig | None = None, **overrides: Any
) -> EmbeddingServiceConfig:
    """An embedding service config for tests."""
    values: dict[str, Any] = {
        "server": loopback_server(),
        "model": model or model_config(),
        "batcher": batcher or BatcherConfig(),
    }
    values.update(overrides)
    return EmbeddingServiceConfig(**values)


async def start_host(apps: Sequence[ServiceApp]) -> ServiceHost:
    """Starts apps on real gRPC servers and waits until they are SERVING."""
    host = ServiceHost(apps)
    await host.start()
    return host
