"""gRPC servicer of textserve.v1.EmbeddingService: convert -> call the service -> convert."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from textserve.core.errors import InvalidInput, TextserveError
from textserve.embedding import convert
from textserve.embedding.service import SERVICE, EmbeddingService
from textserve.transport.registration import check_request
from textserve.transport.rpc import request_deadline, routing_metadata, stream_rpc, unary_rpc
from textserve.transport.streams import pump
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

# Requests of one EmbedStream call processed at once; responses still go out in order.
STREAM_WINDOW = 64


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    """Transport only: every method converts, calls EmbeddingService, converts back."""

    def __init__(self, service: EmbeddingService) -> None:
        self.service = service

    @unary_rpc(SERVICE, "Embed")
    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        params = convert.embed_params(request, routing=routing_metadata(context))
        result = await self.service.embed(params, request_deadline(context))
        return convert.embed_response(result, self.service)

    @unary_rpc(SERVICE, "Info")
    async def Info(
        self, request: embedding_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.InfoResponse:
        return convert.info_response(self.service)

    @stream_rpc(SERVICE, "EmbedStream")
    async def EmbedStream(
        self,
        request_iterator: AsyncIterator[embedding_pb2.EmbedStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[embedding_pb2.EmbedStreamResponse]:
        """Runs up to STREAM_WINDOW requests concurrently, answers in request order.

        A bad message ends the stream with INVALID_ARGUMENT naming its position and
        request_id; answers to the messages before it have already been sent.
        """
        deadline = request_deadline(context)
        routing = routing_metadata(context)

        def check(position: int, item: embedding_pb2.EmbedStreamRequest) -> None:
            if not isinstance(item, embedding_pb2.EmbedStreamRequest):
                check_request(item)
                raise InvalidInput(f"stream[{position}]", "not an EmbedStreamRequest")

        async def one(
            position: int, item: embedding_pb2.EmbedStreamRequest
        ) -> AsyncIterator[embedding_pb2.EmbedStreamResponse]:
            try:
                params = convert.embed_params(
                    item.request, field_prefix=f"stream[{position}].request.", routing=routing
                )
                result = await self.service.embed(params, deadline)
            except TextserveError as error:
                error.message = f"stream[{position}] (request_id={item.request_id!r}): {error.message}"
                raise
            yield embedding_pb2.EmbedStreamResponse(
                request_id=item.request_id, response=convert.embed_response(result, self.service)
            )

        async with contextlib.aclosing(
            pump(request_iterator, one, window=STREAM_WINDOW, check=check)
        ) as responses:
            async for response in responses:
                yield response
