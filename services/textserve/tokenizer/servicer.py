"""gRPC servicer of textserve.v1.TokenizerService: convert -> call the service -> convert."""

from __future__ import annotations

import grpc

from textserve.tokenizer import convert
from textserve.tokenizer.service import SERVICE, TokenizerService
from textserve.transport.rpc import unary_rpc
from textserve.v1 import tokenizer_pb2, tokenizer_pb2_grpc


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServiceServicer):
    """Transport only: every method converts, calls TokenizerService, converts back."""

    def __init__(self, service: TokenizerService) -> None:
        self.service = service

    @unary_rpc(SERVICE, "Tokenize")
    async def Tokenize(
        self, request: tokenizer_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.TokenizeResponse:
        result = await self.service.tokenize(convert.tokenize_params(request))
        return convert.tokenize_response(result)

    @unary_rpc(SERVICE, "Detokenize")
    async def Detokenize(
        self, request: tokenizer_pb2.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.DetokenizeResponse:
        result = await self.service.detokenize(convert.detokenize_params(request))
        return convert.detokenize_response(result)

    @unary_rpc(SERVICE, "CountTokens")
    async def CountTokens(
        self, request: tokenizer_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.CountTokensResponse:
        result = await self.service.count_tokens(convert.count_params(request))
        return convert.count_response(result)

    @unary_rpc(SERVICE, "ApplyChatTemplate")
    async def ApplyChatTemplate(
        self, request: tokenizer_pb2.ApplyChatTemplateRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.ApplyChatTemplateResponse:
        result = await self.service.apply_chat_template(convert.chat_params(request))
        return convert.chat_response(result)

    @unary_rpc(SERVICE, "ListModels")
    async def ListModels(
        self, request: tokenizer_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.ListModelsResponse:
        return convert.list_models_response(self.service.models)
