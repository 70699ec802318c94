"""The embedding ServiceApp: the servicer, its Encoder's lifecycle and its registration."""

from __future__ import annotations

import grpc

from textserve.api.model_control import MODEL_CONTROL_NAME, add_model_control, grpc_code_name
from textserve.core.cache import ResponseCache
from textserve.core.config import CacheConfig
from textserve.embedding.config import EmbeddingServiceConfig
from textserve.embedding.oip import EmbeddingAdapter
from textserve.embedding.service import SERVICE, EmbeddingService
from textserve.embedding.servicer import EmbeddingServicer
from textserve.oip.servicer import INFERENCE_SERVICE_NAME, add_inference_servicer
from textserve.runtime.encoder_engine import Encoder
from textserve.runtime.token_source import TokenSource
from textserve.transport.registration import add_servicer
from textserve.v1 import embedding_pb2


class EmbeddingApp:
    """Embedding service as run by ServiceHost."""

    name = SERVICE
    service_names: tuple[str, ...] = (
        embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
        INFERENCE_SERVICE_NAME,
        MODEL_CONTROL_NAME,
    )

    def __init__(
        self,
        config: EmbeddingServiceConfig,
        cache: ResponseCache | None = None,
        token_source: TokenSource | None = None,
        *,
        encoder: Encoder | None = None,
        cache_config: CacheConfig | None = None,
    ) -> None:
        """`encoder` (built by apps.py, which may share it with the classifier) replaces the
        one built here from the config, `cache` and `token_source`; this app starts and stops it.
        `cache_config`: the cache settings, whose Redis the quality payload log may use."""
        self.server_config = config.server
        self.service = EmbeddingService(
            config, cache, token_source, encoder=encoder, cache_config=cache_config
        )
        self.service.set_code_names(grpc_code_name)
        self.servicer = EmbeddingServicer(self.service)

    def register(self, server: grpc.aio.Server) -> None:
        add_servicer(server, self.servicer, embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"])
        versions = self.service.versions
        add_inference_servicer(
            server, self.name, [EmbeddingAdapter(self.service)], {versions.model: versions}
        )
        add_model_control(server, self.name, versions)

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()
