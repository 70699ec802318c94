"""gRPC servicer of textserve.v1.ModelControl over a service's VersionManager (lifecycle/).

Each model service registers it beside its main service (`add_model_control`). List, load,
unload and set routing: transport only, the manager does the work. With server.auth on, the
bearer-token interceptor lets only admin tokens through (transport/interceptors.py).
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import grpc

from textserve.core.errors import InvalidInput
from textserve.core.validation import check_routing
from textserve.lifecycle.manager import VersionManager, VersionStatus
from textserve.lifecycle.routing import RoutingTable
from textserve.transport.registration import add_servicer
from textserve.transport.rpc import unary_rpc
from textserve.transport.status import status_of
from textserve.v1 import models_pb2

SERVICE_DESCRIPTOR = models_pb2.DESCRIPTOR.services_by_name["ModelControl"]
MODEL_CONTROL_NAME = SERVICE_DESCRIPTOR.full_name
""""textserve.v1.ModelControl", for health and reflection."""

STATE = {
    "READY": models_pb2.VERSION_STATE_READY,
    "LOADING": models_pb2.VERSION_STATE_LOADING,
    "UNLOADING": models_pb2.VERSION_STATE_UNLOADING,
    "UNAVAILABLE": models_pb2.VERSION_STATE_UNAVAILABLE,
    "FAILED": models_pb2.VERSION_STATE_FAILED,
}

_METHODS = {
    "ListVersions": "_list",
    "LoadVersion": "_load",
    "UnloadVersion": "_unload",
    "SetRouting": "_set_routing",
}


def grpc_code_name(error: BaseException | None) -> str:
    """The `code` label of the per-version request counter: OK or the gRPC status name."""
    return "OK" if error is None else status_of(error).name


def version_message(status: VersionStatus) -> models_pb2.ModelVersion:
    return models_pb2.ModelVersion(
        version=status.version,
        state=STATE[status.state],
        reason=status.reason,
        weight=status.weight,
        shadow=status.shadow,
        in_flight=status.in_flight,
    )


def listing(service: str, manager: VersionManager[Any]) -> models_pb2.ListVersionsResponse:
    """Every known version with the routing in force."""
    table = manager.routing
    return models_pb2.ListVersionsResponse(
        service=service,
        model=manager.model,
        versions=[version_message(s) for s in manager.statuses()],
        weights=dict(table.weights),
        shadow_version=table.shadow_version,
        shadow_share=table.shadow_share,
    )


def _version_field(version: str, field: str = "version") -> str:
    try:
        return check_routing(version, "")[0]
    except InvalidInput as error:
        raise InvalidInput(field, error.problem) from None


class ModelControlServicer:
    """Transport only: requests -> the VersionManager -> responses."""

    def __init__(self, service: str, manager: VersionManager[Any]) -> None:
        self.service = service
        self.manager = manager
        # The RPC decorators label metrics by service, which is known only here.
        for rpc, impl in _METHODS.items():
            setattr(self, rpc, MethodType(unary_rpc(service, rpc)(getattr(type(self), impl)), self))

    async def _list(
        self, request: models_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListVersionsResponse:
        return listing(self.service, self.manager)

    async def _load(
        self, request: models_pb2.LoadVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.LoadVersionResponse:
        version = _version_field(request.version)
        if version:
            await self.manager.load(version)
        else:
            await self.manager.reconcile()
        return models_pb2.LoadVersionResponse(versions=[version_message(s) for s in self.manager.statuses()])

    async def _unload(
        self, request: models_pb2.UnloadVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.UnloadVersionResponse:
        version = _version_field(request.version)
        if not version:
            raise InvalidInput("version", "must name the version to unload, e.g. '1'")
        return models_pb2.UnloadVersionResponse(version=version_message(await self.manager.unload(version)))

    async def _set_routing(
        self, request: models_pb2.SetRoutingRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.SetRoutingResponse:
        for version in request.weights:
            _version_field(version, f"weights[{version!r}]")
        for version, weight in request.weights.items():
            if weight < 0:
                raise InvalidInput(f"weights[{version!r}]", f"must be >= 0; got {weight}")
        if request.shadow_version:
            _version_field(request.shadow_version, "shadow_version")
        if not 0.0 <= request.shadow_share <= 1.0:
            raise InvalidInput("shadow_share", f"must be in [0, 1]; got {request.shadow_share}")
        self.manager.set_routing(
            RoutingTable(dict(request.weights), request.shadow_version, request.shadow_share)
        )
        return models_pb2.SetRoutingResponse(routing=listing(self.service, self.manager))


def add_model_control(
    server: grpc.aio.Server, service: str, manager: VersionManager[Any]
) -> ModelControlServicer:
    """Serves textserve.v1.ModelControl for `manager` on `server`; apps add MODEL_CONTROL_NAME
    to their `service_names`."""
    servicer = ModelControlServicer(service, manager)
    add_servicer(server, servicer, SERVICE_DESCRIPTOR)
    return servicer
