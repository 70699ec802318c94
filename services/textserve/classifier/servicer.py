"""gRPC servicer of textserve.v1.ClassifierService: convert -> call the service -> convert."""

from __future__ import annotations

import grpc

from textserve.classifier import convert
from textserve.classifier.service import SERVICE, ClassifierService
from textserve.transport.rpc import request_deadline, unary_rpc
from textserve.v1 import classifier_pb2, classifier_pb2_grpc


class ClassifierServicer(classifier_pb2_grpc.ClassifierServiceServicer):
    """Transport only: every method converts, calls ClassifierService, converts back."""

    def __init__(self, service: ClassifierService) -> None:
        self.service = service

    @unary_rpc(SERVICE, "Classify")
    async def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        result = await self.service.classify(convert.classify_params(request), request_deadline(context))
        return convert.classify_response(result)

    @unary_rpc(SERVICE, "ClassifierInfo")
    async def ClassifierInfo(
        self, request: classifier_pb2.ClassifierInfoRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifierInfoResponse:
        description = await self.service.describe(request_deadline(context))
        return convert.info_response(description, self.service.config)
