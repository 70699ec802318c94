"""Server bootstrap: gRPC servers (grpc.aio) with health, reflection, TLS, metrics and SIGTERM drain.

A `ServiceApp` is one service's servicers plus its start/stop (model load, batchers).
`ServiceHost` runs one or more apps, each on its own gRPC server: it binds the port,
reports NOT_SERVING until `app.start()` returns, then SERVING; on SIGTERM it reports
NOT_SERVING, stops accepting, lets in-flight RPCs finish within the grace period, then
stops the apps. When an app's `start()` raises, the host logs it, stops every server and
app, and `serve_forever` raises `StartFailed` (the `serve` command exits 1).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from grpc_reflection.v1alpha import reflection

from textserve.core.config import ServerConfig
from textserve.transport.health import HEALTH_SERVICE_NAME, HealthState
from textserve.transport.interceptors import build_interceptors
from textserve.transport.tls import reloading_server_credentials

log = logging.getLogger(__name__)


class StartFailed(RuntimeError):
    """An app's `start()` raised; the host has stopped every server and app."""

    def __init__(self, service: str, cause: BaseException) -> None:
        super().__init__(f"{service} failed to start: {type(cause).__name__}: {cause}")
        self.service = service


# How often the host asks an app that reports its own health (`serving()`) whether it can serve.
HEALTH_POLL_S = 1.0


class ServiceApp(Protocol):
    """One service: what it registers on a gRPC server and how it starts and stops.

    An app may also have `serving() -> bool`: once started, the host polls it (HEALTH_POLL_S)
    and reports NOT_SERVING while it is False (a generation engine being replaced), so
    readiness probes take the pod out of rotation meanwhile.
    """

    name: str
    """Short name ("embedding"), used in metrics and logs."""
    service_names: tuple[str, ...]
    """Full gRPC service names ("textserve.v1.EmbeddingService"), for health and reflection."""
    server_config: ServerConfig
    """Port, limits, TLS and auth of the server."""

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the servicers to the server."""
        ...

    async def start(self) -> None:
        """Loads models and starts background work; the server is SERVING once it returns."""
        ...

    async def stop(self) -> None:
        """Stops background work after in-flight RPCs have finished."""
        ...


def grpc_options(config: ServerConfig) -> list[tuple[str, Any]]:
    """Channel options of a server: message limits, stream limits, keepalive, connection age."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
        # Calls grpc received but the event loop has not taken up yet: over its default backlog
        # (1000, dropping at random up to 3000) grpc answers a bare CANCELLED. Taken up, a call
        # over the admission bound is refused clearly (interceptors.AdmissionInterceptor).
        ("grpc.server.max_pending_requests", config.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", config.max_pending_calls),
        # Count open HTTP/2 streams against max_concurrent_streams, as the client does, instead
        # of streams not yet freed by Python: otherwise a burst on one connection gets
        # REFUSED_STREAM (UNAVAILABLE) for streams the client believes it may open.
        ("grpc.http.overload_protection", 0),
    ]
    if config.max_connection_age_ms:
        # Clients re-resolve when the connection goes away: new replicas get traffic.
        options += [
            ("grpc.max_connection_age_ms", config.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", config.max_connection_age_grace_ms),
        ]
    return options


async def _start_probe_server(config: ServerConfig, health: HealthState) -> tuple[grpc.aio.Server, int]:
    """A plaintext server on config.health_port with only grpc.health.v1 (no app RPCs, no TLS)."""
    probe = grpc.aio.server(options=grpc_options(config))
    health.register(probe)
    port = probe.add_insecure_port(f"{config.host}:{config.health_port}")
    if port == 0:
        raise OSError(f"could not bind the health port {config.host}:{config.health_port}")
    await probe.start()
    log.info("health probes listening", extra={"port": port, "tls": False})
    return probe, port


@dataclass
class RunningServer:
    """A started app with its server, bound port and health state."""

    app: ServiceApp
    server: grpc.aio.Server
    port: int
    health: HealthState
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    probe_server: grpc.aio.Server | None = None
    """Plaintext health-only server (server.health_port), for probes when TLS is on."""
    probe_port: int | None = None
    """Bound port of probe_server."""


class ServiceHost:
    """Runs apps on gRPC servers in this event loop."""

    def __init__(
        self, apps: Sequence[ServiceApp], interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    ) -> None:
        self.apps = list(apps)
        self.interceptors = list(interceptors)
        self.running: list[RunningServer] = []
        self.failure: StartFailed | None = None
        """The first app start that raised, if any."""
        self._starts: list[asyncio.Task[None]] = []
        self._watches: list[asyncio.Task[None]] = []
        self._failed = asyncio.Event()
        self._stopping = asyncio.Event()

    def port_of(self, name: str) -> int:
        """The bound port of the app called `name`."""
        for item in self.running:
            if item.app.name == name:
                return item.port
        raise KeyError(name)

    async def start(self, wait_ready: bool = True) -> None:
        """Binds and starts every server (NOT_SERVING), then starts the apps (SERVING)."""
        for app in self.apps:
            config = app.server_config
            interceptors = list(self.interceptors)

            interceptors += build_interceptors(app.name, config)
            server = grpc.aio.server(
                options=grpc_options(config),
                interceptors=interceptors,
                maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            )
            health = HealthState(app.service_names)
            health.register(server)
            app.register(server)
            if config.reflection:
                reflection.enable_server_reflection(
                    (*app.service_names, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
                )
            address = f"{config.host}:{config.port}"
            if config.tls.enabled:
                # Re-read on new handshakes when the mounted files rotate (core/tls.py).
                port = server.add_secure_port(address, reloading_server_credentials(config.tls))
            else:
                port = server.add_insecure_port(address)
            if port == 0:
                raise OSError(f"could not bind {app.name} to {address}")
            await health.set_serving(False)
            await server.start()
            log.info("listening", extra={"service": app.name, "port": port, "tls": config.tls.enabled})
            running = RunningServer(app, server, port, health)
            if config.health_port is not None:
                running.probe_server, running.probe_port = await _start_probe_server(config, health)
            self.running.append(running)
        self._starts = [
            asyncio.create_task(self._start_app(item), name=f"start-{item.app.name}") for item in self.running
        ]
        if wait_ready:
            await asyncio.gather(*self._starts)
            if self.failure is not None:
                raise self.failure.__cause__ or self.failure

    async def _start_app(self, item: RunningServer) -> None:
        try:
            await item.app.start()
        except Exception as exc:
            # Kept, not raised: a task nobody awaits would only print "Task exception was
            # never retrieved" while the process stays up NOT_SERVING.
            log.error(
                "start failed: %s: %s",
                type(exc).__name__,
                exc,
                exc_info=exc,
                extra={"service": item.app.name},
            )
            if self.failure is None:
                self.failure = StartFailed(item.app.name, exc)
                self.failure.__cause__ = exc
            self._failed.set()
            return
        await item.health.set_serving(True)
        item.ready.set()
        log.info("serving", extra={"service": item.app.name, "port": item.port})
        serving = getattr(item.app, "serving", None)
        if serving is not None:
            watch = asyncio.create_task(self._watch(item, serving), name=f"health-{item.app.name}")
            self._watches.append(watch)

    async def _watch(self, item: RunningServer, serving: Callable[[], bool]) -> None:
        """Keeps the app's health status in step with its own `serving()` until the host stops."""
        reported = True
        while not self._stopping.is_set():
            await asyncio.sleep(HEALTH_POLL_S)
            now = bool(serving())
            if now != reported and not self._stopping.is_set():
                await item.health.set_serving(now)
                log.warning(
                    "serving" if now else "not serving",
                    extra={"service": item.app.name, "reason": "the app reported its own state"},
                )
                reported = now

    async def stop(self, grace: float | None = None) -> None:
        """Graceful drain: NOT_SERVING, stop accepting, finish in-flight RPCs, stop apps."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for task in [*self._starts, *self._watches]:
            task.cancel()  # apps still loading when another failed or a signal came
        await asyncio.gather(*self._starts, *self._watches, return_exceptions=True)
        for item in self.running:
            await item.health.shutdown()
        await asyncio.gather(
            *(
                item.server.stop(item.app.server_config.grace_period_s if grace is None else grace)
                for item in self.running
            )
        )
        for item in self.running:
            if item.probe_server is not None:
                await item.probe_server.stop(0)
        for item in self.running:
            try:
                await item.app.stop()
            except Exception:
                log.exception("error while stopping", extra={"service": item.app.name})
        log.info("stopped", extra={"services": [item.app.name for item in self.running]})

    async def wait_stop(self, stop_requested: asyncio.Event) -> None:
        """Returns when `stop_requested` is set or an app's start has failed (see `failure`)."""
        waits = [asyncio.ensure_future(stop_requested.wait()), asyncio.ensure_future(self._failed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if self.failure is not None:
            log.error("an app failed to start; stopping", extra={"service": self.failure.service})
        else:
            log.info("signal received; draining")

    def raise_failure(self) -> None:
        """Raises `StartFailed` when an app's start failed."""
        if self.failure is not None:
            raise self.failure

    async def serve_forever(self) -> None:
        """Starts, then waits for SIGTERM/SIGINT (or a failed start) and drains.

        Raises `StartFailed` after stopping everything when an app's start raised.
        """
        stop_requested = stop_signals()
        await self.start(wait_ready=False)
        await self.wait_stop(stop_requested)
        await self.stop()
        self.raise_failure()


def stop_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT in the running loop."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    return stop_requested
