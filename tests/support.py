"""Helpers for tests: configs bound to loopback with free ports, and a host starter."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from textserve.core.config import BatcherConfig, ModelConfig, ServerConfig
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.transport.server import ServiceApp, ServiceHost


def export_code_hash() -> str:
    """A hash of the code that builds and exports the ONNX graph (pooling wrapper, export call,
    cache path, opset): part of the tests' cache directory, so a change to pooling or export
    never passes locally on a graph exported by the previous code."""
    from textserve.runtime import encoder, pooling

    parts = [
        inspect.getsource(f)
        for f in (encoder._torch_module, pooling.pool_states, encoder.export_onnx, encoder.onnx_cache_path)
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


async def wait_until(condition: Callable[[], object], limit_s: float = 30.0, every_s: float = 0.001) -> None:
    """Bounded poll of a state another task or thread sets (an event, a counter, a metric):
    the synchronisation of the tests, never a sleep of a guessed length. Fails at `limit_s`."""
    stop_at = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < stop_at, f"not reached within {limit_s} s: {condition}"
        await asyncio.sleep(every_s)


async def settle(rounds: int = 100) -> None:
    """Lets every ready task of this event loop run on to its next wait: for unit tests whose
    tasks await only in-process events (no thread, no socket), a fixed number of loop turns,
    not a length of time, so the result does not depend on the machine's speed."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def service_total(name: str, service: str) -> float:
    """The sum of a metric sample `name` over every label set of `service` (its model and
    version labels whatever they are)."""
    from textserve.core.metrics import REGISTRY

    total = 0.0
    for family in REGISTRY.collect():
        for item in family.samples:
            if item.name == name and item.labels.get("service") == service:
                total += item.value
    return total


def process_alive(pid: int) -> bool:
    """True while process `pid` runs (a zombie not reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
