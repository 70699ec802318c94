"""gRPC servicer of textserve.v1.GenerationService: convert -> call the service -> convert."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from textserve.generation import convert
from textserve.generation.service import SERVICE, GenerationService
from textserve.transport.rpc import request_deadline, routing_metadata, stream_rpc, unary_rpc
from textserve.v1 import generation_pb2, generation_pb2_grpc


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """Transport only: every method converts, calls GenerationService, converts back."""

    def __init__(self, service: GenerationService) -> None:
        self.service = service

    @unary_rpc(SERVICE, "Generate")
    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateResponse:
        params = convert.generate_params(request, routing_metadata(context))
        result = await self.service.generate(params, request_deadline(context))
        return convert.generate_response(result, result.info or self.service.info)

    @stream_rpc(SERVICE, "GenerateStream")
    async def GenerateStream(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        """One message per token (or per stream_interval_tokens); the last carries the finish reason."""
        params = convert.generate_params(request, routing_metadata(context))
        async for chunk in self.service.stream(params, request_deadline(context)):
            yield convert.stream_response(chunk, chunk.info or self.service.info)

    @unary_rpc(SERVICE, "GenerationInfo")
    async def GenerationInfo(
        self, request: generation_pb2.GenerationInfoRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerationInfoResponse:
        service = self.service
        return convert.info_response(service.info, service.config, service.versions.primary().version)
