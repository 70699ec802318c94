"""gRPC servicer of textserve.v1.ClassifierService: convert -> call the service -> convert.

When the classifier keeps predictions by request id (quality feedback or payload log on),
Classify reads the caller's x-request-id, makes one up (uuid4 hex) when there is none, and
sends it back in the response's initial metadata: that is the id Feedback takes.
"""

from __future__ import annotations

import uuid

import grpc

from textserve.classifier import convert
from textserve.classifier.service import SERVICE, ClassifierService
from textserve.core.validation import MAX_REQUEST_ID_CHARS
from textserve.transport.rpc import (
    REQUEST_ID_KEY,
    request_deadline,
    request_id,
    routing_metadata,
    unary_rpc,
)
from textserve.v1 import classifier_pb2, classifier_pb2_grpc


class ClassifierServicer(classifier_pb2_grpc.ClassifierServiceServicer):
    """Transport only: every method converts, calls ClassifierService, converts back."""

    def __init__(self, service: ClassifierService) -> None:
        self.service = service

    @unary_rpc(SERVICE, "Classify")
    async def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        call_id = ""
        if self.service.quality.needs_request_id:
            call_id = (request_id(context) or uuid.uuid4().hex)[:MAX_REQUEST_ID_CHARS]
            await context.send_initial_metadata(((REQUEST_ID_KEY, call_id),))
        result = await self.service.classify(
            convert.classify_params(request, call_id, routing_metadata(context)), request_deadline(context)
        )
        return convert.classify_response(result)

    @unary_rpc(SERVICE, "ClassifierInfo")
    async def ClassifierInfo(
        self, request: classifier_pb2.ClassifierInfoRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifierInfoResponse:
        description = await self.service.describe(request_deadline(context))
        return convert.info_response(description, self.service.config)

    @unary_rpc(SERVICE, "Feedback")
    async def Feedback(
        self, request: classifier_pb2.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.FeedbackResponse:
        result = await self.service.feedback(convert.feedback_params(request), request_deadline(context))
        return convert.feedback_response(result)

    @unary_rpc(SERVICE, "ExtractEntities")
    async def ExtractEntities(
        self, request: classifier_pb2.ExtractEntitiesRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ExtractEntitiesResponse:
        result = await self.service.extract_entities(
            convert.entities_params(request), request_deadline(context)
        )
        return convert.entities_response(result)
