"""A real redis-server of the tests' own, on a free loopback port: start, kill -9, restart.

Never touches the system Redis on 6379. No persistence (`--save ""`, `--appendonly no`),
so a restarted server comes back empty, as a crashed cache pod does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from tests.support import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_available() -> bool:
    """True when a redis-server binary is installed (Debian package redis-server)."""
    return Path(REDIS_SERVER).is_file()


class RedisServer:
    """One redis-server subprocess; `port` stays the same across kill() and start()."""

    def __init__(
        self,
        port: int | None = None,
        args: Sequence[str] = (),
        password: str | None = None,
        tls_files: tuple[Path, Path, Path] | None = None,
        tls_client_certs: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.args = list(args)
        self.password = password
        self.tls_files = tls_files
        """(certificate, key, CA) for a TLS-only server (rediss://)."""
        self.tls_client_certs = tls_client_certs
        """Require client certificates signed by the CA (mutual TLS)."""
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="textserve-redis-")

    @property
    def url(self) -> str:
        """redis:// (or rediss://) URL of db 0, without the password."""
        scheme = "rediss" if self.tls_files else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The redis-server command line."""
        cmd = [REDIS_SERVER, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", self._dir, "--logfile", "", "--loglevel", "warning"]
        if self.tls_files:
            cert, key, ca = self.tls_files
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert)]
            cmd += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
            cmd += ["--tls-auth-clients", "yes" if self.tls_client_certs else "no"]
        else:
            cmd += ["--port", str(self.port)]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + self.args

    def start(self, timeout_s: float = 15.0) -> None:
        """Starts the server and waits until it accepts connections."""
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop_at = time.monotonic() + timeout_s
        while time.monotonic() < stop_at:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.command()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"redis-server did not listen on {self.port} within {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL, as a crashed pod: no shutdown, the data is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Terminates the server (if running) and removes its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def client(self) -> redis.Redis:
        """A synchronous client for assertions (plain TCP servers only)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)


def own_redis() -> Iterator[RedisServer]:
    """A started RedisServer for a fixture to yield from (`yield from own_redis()`), stopped
    after; skips the fixture's tests when redis-server is not installed."""
    if not redis_available():
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.stop()
