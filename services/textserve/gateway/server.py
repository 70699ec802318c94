"""Runs the gateway app on uvicorn inside the current event loop, next to any gRPC servers.

`GatewayServer` binds its socket itself (so port 0 works and the bound port is known),
runs uvicorn's `serve()` as a task without uvicorn's own signal handlers, and on `stop()`
lets in-flight requests and streams finish within `grace_period_s` before the lifespan
closes the channels. `serve_with_grpc` is `textserve serve gateway|all`: start the gRPC
apps and the gateway, wait for SIGTERM/SIGINT (or a gRPC app's failed start), drain the
gateway first (it calls the services), then the gRPC servers; a failed start raises
`StartFailed` once everything is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from textserve.gateway.app import create_app
from textserve.gateway.config import GatewayConfig
from textserve.transport.server import ServiceHost, StartFailed, stop_signals

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the process's runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (IPv6 when host has a colon), ready for uvicorn to listen on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto
    # says TCP; with proto 0 every small write (each SSE event) waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"gateway could not bind {host}:{port}: {exc}") from exc
    sock.set_inheritable(True)
    return sock


class GatewayServer:
    """The gateway on uvicorn, started and stopped from async code."""

    def __init__(self, config: GatewayConfig, app: FastAPI | None = None) -> None:
        self.config = config
        self.app = app or create_app(config)
        self.port = 0
        """Bound port, once started."""
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Binds, starts serving, and returns once the app's lifespan has started."""
        sock = bind_socket(self.config.host, self.config.port)
        self.port = int(sock.getsockname()[1])
        uv_config = uvicorn.Config(
            self.app,
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
        )
        # uvicorn types it int but only passes it to asyncio.wait_for; keep fractions (and 0).
        uv_config.timeout_graceful_shutdown = self.config.grace_period_s  # type: ignore[assignment]
        server = _Uvicorn(uv_config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-http")
        while not server.started:
            if self._task.done():
                self._task.result()  # re-raises a start-up failure
                raise RuntimeError("gateway HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        log.info("listening", extra={"service": "gateway", "port": self.port})

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish (grace period), closes the channels."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._server = None
        log.info("stopped", extra={"service": "gateway"})


async def serve_with_grpc(host: ServiceHost, gateway: GatewayServer) -> None:
    """Starts the gRPC apps and the gateway, waits for SIGTERM/SIGINT, then drains both.

    Raises `StartFailed` (after stopping the rest) when a gRPC app or the gateway fails to start.
    """
    stop_requested = stop_signals()
    await host.start(wait_ready=False)
    try:
        await gateway.start()
    except Exception as exc:
        log.error("start failed: %s", exc, exc_info=exc, extra={"service": "gateway"})
        await host.stop()
        raise StartFailed("gateway", exc) from exc
    await host.wait_stop(stop_requested)
    await gateway.stop()
    await host.stop()
    host.raise_failure()
