"""The tokenizer ServiceApp: the servicer, its tokenizers' lifecycle and its registration."""

from __future__ import annotations

import grpc

from textserve.oip.servicer import INFERENCE_SERVICE_NAME, add_inference_servicer
from textserve.tokenizer.config import TokenizerServiceConfig
from textserve.tokenizer.oip import tokenizer_adapters
from textserve.tokenizer.service import SERVICE, TokenizerService
from textserve.tokenizer.servicer import TokenizerServicer
from textserve.transport.registration import add_servicer
from textserve.v1 import tokenizer_pb2

_DESCRIPTOR = tokenizer_pb2.DESCRIPTOR.services_by_name["TokenizerService"]


class TokenizerApp:
    """Tokenizer service as run by ServiceHost."""

    name = SERVICE
    service_names: tuple[str, ...] = (_DESCRIPTOR.full_name, INFERENCE_SERVICE_NAME)

    def __init__(self, config: TokenizerServiceConfig) -> None:
        self.server_config = config.server
        self.service = TokenizerService(config)
        self.servicer = TokenizerServicer(self.service)

    def register(self, server: grpc.aio.Server) -> None:
        add_servicer(server, self.servicer, _DESCRIPTOR)
        add_inference_servicer(server, self.name, tokenizer_adapters(self.service))

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()
