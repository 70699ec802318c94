"""A `textserve serve <services>` subprocess on free loopback ports, for load runs and benchmarks.

Writes a YAML config (every service on 127.0.0.1, its own free port, metrics on a free
port), starts the process, waits until every service reports SERVING, samples its RSS,
reads its /metrics, and stops it with SIGTERM (checking the drain exits 0).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = ("tokenizer", "embedding", "classifier", "generation")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def servable(wanted: tuple[str, ...] = SERVICES) -> list[str]:
    """The services of `wanted` that `textserve serve` can run in this checkout."""
    from textserve.apps import GRPC_SERVICES

    return [name for name in wanted if name in GRPC_SERVICES]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


class Served:
    """The process, its service addresses and its log."""

    def __init__(
        self, services: list[str], settings: dict[str, Any] | None = None, workdir: Path | None = None
    ) -> None:
        self.services = services
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="textserve-load-"))
        self.ports = {name: free_port() for name in services}
        self.metrics_port = free_port()
        base: dict[str, Any] = {
            "log": {"level": "WARNING", "format": "json"},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": self.metrics_port},
        }
        for name in services:
            base[name] = {"server": {"host": "127.0.0.1", "port": self.ports[name], "grace_period_s": 30.0}}
        self.settings = _merge(base, settings or {})
        self.config_file = self.workdir / "textserve.yaml"
        self.config_file.write_text(yaml.safe_dump(self.settings))
        self.log_file = self.workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def start(self, ready_timeout_s: float = 300.0) -> None:
        """Starts the process and waits until every service is SERVING."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEXTSERVE_")}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "textserve.cli",
                    "serve",
                    *self.services,
                    "--config",
                    str(self.config_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        stop_at = time.monotonic() + ready_timeout_s
        for name in self.services:
            self._wait_serving(name, stop_at)

    def _wait_serving(self, service: str, stop_at: float) -> None:
        with grpc.insecure_channel(self.address(service)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"textserve exited while starting:\n{self.tail()}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > stop_at:
                    raise RuntimeError(f"{service} did not become SERVING:\n{self.tail()}")
                time.sleep(0.25)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server process now (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            return str(reply.read().decode())

    def error_counts(self) -> dict[str, float]:
        """textserve_requests_total by "service/method code" for every code but OK."""
        counts: dict[str, float] = {}
        for line in self.metrics().splitlines():
            if not line.startswith("textserve_requests_total{") or 'code="OK"' in line:
                continue
            labels, value = line.rsplit(" ", 1)
            if float(value) > 0:
                counts[labels[len("textserve_requests_total") :]] = float(value)
        return counts

    def tail(self, chars: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else ""

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait for the drain; returns the exit code (kill -9 after the timeout: -9)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                return -9
        return int(self.proc.returncode)
