"""gRPC servicer of inference.GRPCInferenceService for the models of one server.

Each model service registers this servicer next to its own API (`add_inference_servicer`),
with one adapter per model it serves. Every RPC goes through the same decorators as the
native API (error mapping, textserve_requests_total by service/method/code), and every
inference through the service's own validation, batcher and cache.

ModelStreamInfer follows Triton: requests of one stream run concurrently, each answered by
one or more responses that carry its id, and a failed request is answered in-band with
error_message while the stream goes on. Every streamed response has the parameter
triton_final_response; a request with triton_enable_empty_final_response=true gets an
extra empty response to mark its end.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from types import MethodType
from typing import Any

import grpc

import textserve
from textserve.core.errors import BackendFailure, NotFound, NotReady, TextserveError
from textserve.lifecycle.manager import VersionManager
from textserve.oip import grpc_predict_v2_pb2 as pb
from textserve.oip import parameters, tensors
from textserve.oip.model import InferInputs, InferOutcome, ModelAdapter, ModelCard, TensorSpec
from textserve.oip.registry import ModelRegistry
from textserve.transport.registration import MalformedRequest, add_servicer, check_request
from textserve.transport.rpc import request_deadline, stream_rpc, unary_rpc
from textserve.transport.status import status_of
from textserve.transport.streams import pump

log = logging.getLogger(__name__)

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
INFERENCE_SERVICE_NAME = SERVICE_DESCRIPTOR.full_name
""""inference.GRPCInferenceService", for health and reflection."""

SERVER_NAME = "textserve"
EXTENSIONS = ("parameters", "model_repository")
"""Protocol extensions reported by ServerMetadata."""

FINAL_RESPONSE = "triton_final_response"
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"

STREAM_WINDOW = 64
"""Requests of one ModelStreamInfer call processed at once."""
STREAM_BUFFER = 256
"""Responses of one ModelStreamInfer call waiting to be sent."""

_UNARY = {
    "ServerLive": "_server_live",
    "ServerReady": "_server_ready",
    "ModelReady": "_model_ready",
    "ServerMetadata": "_server_metadata",
    "ModelMetadata": "_model_metadata",
    "ModelInfer": "_model_infer",
    "RepositoryIndex": "_repository_index",
    "RepositoryModelLoad": "_repository_model_load",
    "RepositoryModelUnload": "_repository_model_unload",
}


def _tensor_metadata(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=list(s.shape))
        for s in specs
    ]


class InferenceServicer:
    """Transport only: decode tensors, call the model's adapter, encode tensors."""

    def __init__(
        self,
        service: str,
        adapters: Sequence[ModelAdapter],
        managers: Mapping[str, VersionManager[Any]] | None = None,
    ) -> None:
        """`managers`: the version manager of each model by model name (repository extension)."""
        self.service = service
        self.registry = ModelRegistry(adapters)
        self.managers = dict(managers or {})
        # The RPC decorators label metrics by service, which is known only here.
        for rpc, impl in _UNARY.items():
            setattr(self, rpc, MethodType(unary_rpc(service, rpc)(getattr(type(self), impl)), self))
        self.ModelStreamInfer = MethodType(
            stream_rpc(service, "ModelStreamInfer")(type(self)._model_stream_infer), self
        )

    # --- health and metadata -------------------------------------------------------------
    async def _server_live(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def _server_ready(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.registry.ready(request_deadline(context)))

    async def _model_ready(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            await self.registry.find(request.name, request.version, request_deadline(context), field="name")
        except TextserveError as error:
            if isinstance(error, NotReady):  # still loading: not ready (yet)
                return pb.ModelReadyResponse(ready=False)
            raise
        return pb.ModelReadyResponse(ready=True)

    async def _server_metadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        extensions = EXTENSIONS if self.managers else EXTENSIONS[:1]
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=textserve.__version__, extensions=extensions
        )

    async def _model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        deadline = request_deadline(context)
        _, card = await self.registry.find(request.name, request.version, deadline, field="name")
        return pb.ModelMetadataResponse(
            name=card.name,
            versions=([card.version] if card.version else []) + list(card.versions),
            platform=card.platform,
            inputs=_tensor_metadata(card.inputs),
            outputs=_tensor_metadata(card.outputs),
        )

    # --- model repository extension ------------------------------------------------------
    def _manager(self, name: str) -> VersionManager[Any]:
        for manager in self.managers.values():
            if name in (manager.model, manager.service):
                return manager
        raise NotFound(f"model_name: no model {name!r} in the repository; models: {sorted(self.managers)}")

    async def _repository_index(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for manager in self.managers.values():
            for status in manager.statuses():
                if request.ready and status.state != "READY":
                    continue
                # Triton's states: a failed load is UNAVAILABLE with its reason.
                state = "UNAVAILABLE" if status.state == "FAILED" else status.state
                response.models.add(
                    name=manager.model, version=status.version, state=state, reason=status.reason
                )
        return response

    async def _repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        manager = self._manager(request.model_name)
        await manager.reconcile()
        failures = manager.failures()
        if failures:
            detail = "; ".join(f"version {v}: {reason}" for v, reason in sorted(failures.items()))
            raise BackendFailure(f"failed to load {request.model_name!r}: {detail}")
        return pb.RepositoryModelLoadResponse()

    async def _repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._manager(request.model_name).unload_all()
        return pb.RepositoryModelUnloadResponse()

    # --- inference -----------------------------------------------------------------------
    async def _prepare(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> tuple[ModelAdapter, ModelCard, InferInputs, tensors.OutputPlan]:
        adapter, card = await self.registry.find(request.model_name, request.model_version, deadline)
        texts = tensors.decode_inputs(request, card.inputs)
        plan = tensors.plan_outputs(request, card.outputs)
        pinned = request.model_version if request.model_version in card.versions else ""
        inputs = InferInputs(texts, parameters.Parameters.of(request.parameters), deadline, pinned)
        return adapter, card, inputs, plan

    @staticmethod
    def _response(
        request: pb.ModelInferRequest,
        card: ModelCard,
        outcome: InferOutcome,
        plan: tensors.OutputPlan,
        extra: dict[str, parameters.ParamValue] | None = None,
    ) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(model_name=card.name, model_version=card.version, id=request.id)
        parameters.encode(response.parameters, {**outcome.parameters, **(extra or {})})
        by_name = {output.name: output for output in outcome.outputs}
        for name in plan.names:
            if name in by_name:
                tensors.encode_output(response, by_name[name], plan.raw)
        return response

    async def _model_infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        adapter, card, inputs, plan = await self._prepare(request, request_deadline(context))
        outcome = await adapter.infer(inputs)
        return self._response(request, card, outcome, plan)

    async def _stream_one(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> AsyncIterator[pb.ModelInferResponse]:
        """The responses to one request of a stream, the last one marked final."""
        adapter, card, inputs, plan = await self._prepare(request, deadline)
        empty_final = inputs.parameters.get_bool(EMPTY_FINAL_RESPONSE, False)
        finished = False
        async for outcome in adapter.stream(inputs):
            finished = outcome.final and not empty_final
            yield self._response(request, card, outcome, plan, {FINAL_RESPONSE: finished})
        if not finished:
            yield self._response(request, card, InferOutcome([]), plan, {FINAL_RESPONSE: True})

    @staticmethod
    def _stream_error(request: Any, error: BaseException) -> pb.ModelStreamInferResponse:
        """An in-band error answer, carrying the failed request's id when it decoded."""
        if isinstance(request, MalformedRequest):
            error = request.error()
        if isinstance(error, TextserveError):
            message = f"{status_of(error).name}: {error.message}"
        else:
            log.error("unexpected error in ModelStreamInfer", exc_info=error)
            message = f"INTERNAL: internal error in ModelStreamInfer: {type(error).__name__}"
        response = pb.ModelStreamInferResponse(error_message=message)
        if isinstance(request, pb.ModelInferRequest):
            response.infer_response.id = request.id
            response.infer_response.model_name = request.model_name
            response.infer_response.model_version = request.model_version
        return response

    async def _model_stream_infer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        deadline = request_deadline(context)

        async def answer(position: int, request: Any) -> AsyncIterator[pb.ModelStreamInferResponse]:
            try:
                check_request(request)
                async for response in self._stream_one(request, deadline):
                    yield pb.ModelStreamInferResponse(infer_response=response)
            except Exception as error:
                yield self._stream_error(request, error)

        async with contextlib.aclosing(
            pump(request_iterator, answer, window=STREAM_WINDOW, ordered=False, buffer=STREAM_BUFFER)
        ) as responses:
            async for response in responses:
                yield response


def add_inference_servicer(
    server: grpc.aio.Server,
    service: str,
    adapters: Sequence[ModelAdapter],
    managers: Mapping[str, VersionManager[Any]] | None = None,
) -> InferenceServicer:
    """Serves inference.GRPCInferenceService for `adapters` on `server` (lenient decoding).

    Apps call this from `register` and add INFERENCE_SERVICE_NAME to their
    `service_names`, so health and reflection include the protocol.
    """
    servicer = InferenceServicer(service, adapters, managers)
    add_servicer(server, servicer, SERVICE_DESCRIPTOR)
    return servicer
