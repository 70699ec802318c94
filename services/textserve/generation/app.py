"""The generation ServiceApp: the servicer, its model lifecycle and its registration."""

from __future__ import annotations

import grpc

from textserve.api.model_control import MODEL_CONTROL_NAME, add_model_control, grpc_code_name
from textserve.core.cache import ResponseCache
from textserve.generation.config import GenerationServiceConfig
from textserve.generation.oip import GenerationAdapter
from textserve.generation.service import SERVICE, GenerationService
from textserve.generation.servicer import GenerationServicer
from textserve.oip.servicer import INFERENCE_SERVICE_NAME, add_inference_servicer
from textserve.transport.registration import add_servicer
from textserve.v1 import generation_pb2

_DESCRIPTOR = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"]


class GenerationApp:
    """Generation service as run by ServiceHost."""

    name = SERVICE
    service_names: tuple[str, ...] = (_DESCRIPTOR.full_name, INFERENCE_SERVICE_NAME, MODEL_CONTROL_NAME)

    def __init__(self, config: GenerationServiceConfig, cache: ResponseCache | None = None) -> None:
        self.server_config = config.server
        self.service = GenerationService(config, cache)
        self.service.set_code_names(grpc_code_name)
        self.servicer = GenerationServicer(self.service)

    def register(self, server: grpc.aio.Server) -> None:
        add_servicer(server, self.servicer, _DESCRIPTOR)
        versions = self.service.versions
        add_inference_servicer(
            server, self.name, [GenerationAdapter(self.service)], {versions.model: versions}
        )
        add_model_control(server, self.name, versions)

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()

    def serving(self) -> bool:
        """False while no version can serve (a dead engine process being replaced): the host
        reports NOT_SERVING meanwhile."""
        return self.service.ready
