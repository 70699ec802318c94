"""A `textserve serve <services>` subprocess on free loopback ports, for load runs and benchmarks.

`ServerProcess` is what every benchmark starts: each service on its own free 127.0.0.1
port (TEXTSERVE_<SERVICE>__SERVER__HOST/PORT), metrics on a free port (or off), extra
TEXTSERVE_* settings from `env`, an optional YAML `config_file`, the server's output in
`log_file` (default: $BENCH_SERVER_LOG, else discarded). `launch()` starts it,
`wait_ready()` / `wait_ready_blocking()` wait until every service reports SERVING (within
a time limit), `stop()` sends SIGTERM and waits for the drain. `async with` does all three.

`Served` (`make loadtest`, bench_serving) is a `ServerProcess` configured by a YAML file it
writes into a work folder, with the server log next to it, whose environment carries no
TEXTSERVE_* variable of the caller's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads) from /proc/<pid>/stat, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds some server processes used between `start()` and `stop()` (closed_loop's
    before_measure / after_measure hooks)."""

    def __init__(self, servers: Sequence[ServerProcess]) -> None:
        self.servers = list(servers)
        self.seconds = 0.0

    def _now(self) -> float:
        return sum(server.cpu_seconds() for server in self.servers)

    async def start(self) -> None:
        self.seconds = -self._now()

    async def stop(self) -> None:
        self.seconds += self._now()


def metric_total(text: str, name: str, label: str = "") -> float:
    """Sum of the samples of metric `name` in a /metrics page (only lines containing `label`)."""
    total = 0.0
    for line in text.splitlines():
        if line.split("{", 1)[0].split(" ", 1)[0] == name and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 15.0) -> int:
    """SIGTERM, wait for the drain; the exit code (kill -9 after the timeout: -9; 0: never started)."""
    if proc is None:
        return 0
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            return -9
    return int(proc.returncode)


class ProcessContext:
    """`async with` for a benchmark's subprocess: `start()` off the event loop (`stop()` when it
    fails), `stop()` at the end."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> int:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await asyncio.to_thread(self.start)
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


class ServerProcess(ProcessContext):
    """`textserve serve <services>` in a subprocess, every service on its own loopback port.

    services:     what to serve (`textserve serve <services...>`).
    env:          extra environment (TEXTSERVE_* settings), applied last.
    ports:        fixed ports for some services (others get a free port).
    metrics:      serve /metrics on a free port (else TEXTSERVE_METRICS__ENABLED=false).
    config_file:  passed as `--config` (environment variables override it).
    log_file:     where the server's stdout and stderr go (default $BENCH_SERVER_LOG, else nowhere).
    inherit_textserve_env: keep the caller's TEXTSERVE_* variables (False: drop them).
    log_level:    TEXTSERVE_LOG__LEVEL (None: leave it to the config).
    ready_limit_s: how long `wait_ready` waits for SERVING by default.
    label:        names the server in errors.
    """

    def __init__(
        self,
        services: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        ports: Mapping[str, int] | None = None,
        metrics: bool = True,
        config_file: Path | None = None,
        log_file: Path | None = None,
        inherit_textserve_env: bool = True,
        log_level: str | None = "WARNING",
        ready_limit_s: float = 180.0,
        label: str = "",
    ) -> None:
        self.services = list(services)
        self.label = label or f"textserve serve {' '.join(self.services)}"
        self.ports = {name: (ports or {}).get(name) or free_port() for name in self.services}
        self.metrics_port = free_port() if metrics else 0
        self.config_file = config_file
        logged = log_file or os.environ.get("BENCH_SERVER_LOG")
        self.log_file: Path | None = Path(logged) if logged else None
        self.ready_limit_s = ready_limit_s
        self.env = {
            k: v for k, v in os.environ.items() if inherit_textserve_env or not k.startswith("TEXTSERVE_")
        }
        if log_level:
            self.env["TEXTSERVE_LOG__LEVEL"] = log_level
        for name, port in self.ports.items():
            prefix = f"TEXTSERVE_{name.upper()}__SERVER__"
            self.env.update({f"{prefix}HOST": "127.0.0.1", f"{prefix}PORT": str(port)})
        if metrics:
            self.env.update(
                {"TEXTSERVE_METRICS__HOST": "127.0.0.1", "TEXTSERVE_METRICS__PORT": str(self.metrics_port)}
            )
        else:
            self.env["TEXTSERVE_METRICS__ENABLED"] = "false"
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def address(self, service: str | None = None) -> str:
        """host:port of `service` (default: the first one served)."""
        return f"127.0.0.1:{self.ports[service or self.services[0]]}"

    def launch(self) -> Self:
        """Starts the process (without waiting for it)."""
        command = [sys.executable, "-m", "textserve.cli", "serve", *self.services]
        if self.config_file is not None:
            command += ["--config", str(self.config_file)]
        with open(self.log_file or os.devnull, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def wait_ready_blocking(self, limit_s: float | None = None) -> None:
        """Waits until every service reports SERVING; raises if the process exits or time runs out."""
        stop_at = time.monotonic() + (self.ready_limit_s if limit_s is None else limit_s)
        for service in self.services:
            with grpc.insecure_channel(self.address(service)) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                while True:
                    if self.proc is None or self.proc.poll() is not None:
                        code = None if self.proc is None else self.proc.returncode
                        raise RuntimeError(
                            f"{self.label} exited during start-up (code {code}){self._log_hint()}"
                        )
                    try:
                        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > stop_at:
                        raise TimeoutError(f"{self.label}: {service} not SERVING{self._log_hint()}")
                    time.sleep(0.2)

    async def wait_ready(self, limit_s: float | None = None) -> None:
        """`wait_ready_blocking` off the event loop."""
        await asyncio.to_thread(self.wait_ready_blocking, limit_s)

    def start(self, limit_s: float | None = None) -> None:
        """Starts the process (unless `launch` did) and waits until every service is SERVING."""
        if self.proc is None:
            self.launch()
        self.wait_ready_blocking(limit_s)

    def _log_hint(self) -> str:
        if self.log_file is None:
            return " (set BENCH_SERVER_LOG=<file> to keep its log)"
        return f":\n{self.tail()}"

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

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the server process has used so far."""
        return process_cpu_seconds(self.pid)

    def metrics(self) -> str:
        """The server's /metrics page."""
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
        if self.log_file is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait for the drain; returns the exit code (kill -9 after the timeout: -9)."""
        return stop_process(self.proc, timeout_s)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


class Served(ServerProcess):
    """A ServerProcess configured by a YAML file in `workdir` (log: workdir/server.log).

    The caller's TEXTSERVE_* variables are dropped, so the file is the whole configuration.
    """

    def __init__(
        self, services: list[str], settings: dict[str, Any] | None = None, workdir: Path | None = None
    ) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="textserve-load-"))
        ports = {name: free_port() for name in services}
        super().__init__(
            services,
            {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
            ports=ports,
            config_file=self.workdir / "textserve.yaml",
            log_file=self.workdir / "server.log",
            inherit_textserve_env=False,
            log_level=None,
            ready_limit_s=300.0,
        )
        base: dict[str, Any] = {
            "log": {"level": "WARNING", "format": "json"},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": self.metrics_port},
        }
        for name in services:
            base[name] = {"server": {"host": "127.0.0.1", "port": self.ports[name], "grace_period_s": 30.0}}
        self.settings = _merge(base, settings or {})
        assert self.config_file is not None
        self.config_file.write_text(yaml.safe_dump(self.settings))

    def stop(self, timeout_s: float = 60.0) -> int:
        return super().stop(timeout_s)
