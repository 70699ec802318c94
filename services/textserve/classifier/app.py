"""The classifier ServiceApp: the servicer, its model or head lifecycle and its registration."""

from __future__ import annotations

import grpc

from textserve.api.model_control import MODEL_CONTROL_NAME, add_model_control, grpc_code_name
from textserve.classifier.config import ClassifierServiceConfig
from textserve.classifier.entities_oip import EntitiesAdapter
from textserve.classifier.oip import ClassifierAdapter
from textserve.classifier.service import SERVICE, ClassifierService
from textserve.classifier.servicer import ClassifierServicer
from textserve.classifier.vector_source import VectorSource
from textserve.core.cache import ResponseCache
from textserve.core.config import CacheConfig
from textserve.oip.servicer import INFERENCE_SERVICE_NAME, add_inference_servicer
from textserve.runtime.encoder_engine import Encoder
from textserve.transport.registration import add_servicer
from textserve.v1 import classifier_pb2

_DESCRIPTOR = classifier_pb2.DESCRIPTOR.services_by_name["ClassifierService"]


class ClassifierApp:
    """Classifier service as run by ServiceHost."""

    name = SERVICE
    service_names: tuple[str, ...] = (_DESCRIPTOR.full_name, INFERENCE_SERVICE_NAME, MODEL_CONTROL_NAME)

    def __init__(
        self,
        config: ClassifierServiceConfig,
        cache: ResponseCache | None = None,
        source: VectorSource | None = None,
        token: str | None = None,
        *,
        encoder: Encoder | None = None,
        cache_config: CacheConfig | None = None,
    ) -> None:
        """`encoder`: the Encoder of the embedding app of this process, shared (that app
        starts and stops it); else the classifier builds its own or calls the embedding service.
        `cache_config`: the cache settings, whose Redis the quality feedback store and payload log use."""
        self.server_config = config.server
        self.service = ClassifierService(
            config, cache, source, token, encoder=encoder, cache_config=cache_config
        )
        self.service.set_code_names(grpc_code_name)
        self.servicer = ClassifierServicer(self.service)

    def register(self, server: grpc.aio.Server) -> None:
        add_servicer(server, self.servicer, _DESCRIPTOR)
        versions = self.service.versions
        adapter = (
            EntitiesAdapter(self.service)
            if self.service.entities is not None
            else ClassifierAdapter(self.service)
        )
        add_inference_servicer(server, self.name, [adapter], {versions.model: versions})
        add_model_control(server, self.name, versions)

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()
