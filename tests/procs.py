"""`textserve serve ...` as a real subprocess, for tests that send signals or kill -9.

The process gets a YAML config file (settings given as a dict), free loopback ports, no
TEXTSERVE_* variables from the test environment, and writes its logs to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc


class ServeProcess:
    """One `textserve serve <services>` process."""

    def __init__(
        self, workdir: Path, services: list[str], settings: dict[str, Any], name: str = "serve"
    ) -> None:
        self.workdir = workdir
        self.services = services
        self.config_file = workdir / f"{name}.yaml"
        self.config_file.write_text(yaml.safe_dump(settings))
        self.log_file = workdir / f"{name}.log"
        self.metrics_port: int | None = settings.get("metrics", {}).get("port")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Starts (or restarts) the process; the log file is appended to."""
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

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def metrics_text(self) -> str:
        """The process's /metrics page."""
        assert self.metrics_port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    def gauge(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def wait_serving(
        self,
        address: str,
        credentials: grpc.ChannelCredentials | None = None,
        limit_s: float = 180.0,
    ) -> None:
        """Waits until grpc.health.v1 at `address` reports SERVING (fails if the process dies)."""
        stop_at = time.monotonic() + limit_s
        while time.monotonic() < stop_at:
            assert self.alive(), "process exited:\n" + self.logs()[-4000:]
            channel = (
                grpc.aio.secure_channel(address, credentials)
                if credentials
                else grpc.aio.insecure_channel(address)
            )
            async with channel:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=2
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            await asyncio.sleep(0.25)
        raise AssertionError(f"{address} did not become SERVING:\n" + self.logs()[-4000:])

    def kill(self) -> None:
        """kill -9 (no drain), and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)
