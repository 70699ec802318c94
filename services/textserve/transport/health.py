"""grpc.health.v1 state of one server: NOT_SERVING until its model loads, then SERVING."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import _async as health_aio  # the asyncio servicer (health.aio re-exports it)
from grpc_health.v1 import health_pb2, health_pb2_grpc

HEALTH_SERVICE_NAME = "grpc.health.v1.Health"


class HealthState:
    """Owns the health servicer of one gRPC server and the names it reports on."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self.servicer = health_aio.HealthServicer()
        self.names = ("", *service_names)

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the health service to the server."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def set_serving(self, serving: bool) -> None:
        """Reports SERVING (model loaded) or NOT_SERVING for the server and each service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self.names:
            await self.servicer.set(name, status)

    async def shutdown(self) -> None:
        """Reports NOT_SERVING everywhere and ignores later changes (graceful shutdown)."""
        await self.servicer.enter_graceful_shutdown()
