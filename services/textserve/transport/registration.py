"""Registers servicers from service descriptors with a lenient request decoder.

The generated `add_XServicer_to_server` functions let a malformed request die inside
grpc as INTERNAL. Here a request that does not parse, or that carries a known field with
the wrong wire type, becomes a `MalformedRequest` the servicer boundary turns into
INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf import message_factory
from google.protobuf.unknown_fields import UnknownFieldSet

from textserve.core.errors import InvalidInput

_WIRE_TYPES = {0: "varint", 1: "64-bit", 2: "length-delimited", 5: "32-bit"}


@dataclass(frozen=True)
class MalformedRequest:
    """A request that could not be decoded as its message type."""

    message_type: str
    field: str
    problem: str

    def error(self) -> InvalidInput:
        """The INVALID_ARGUMENT error to answer with."""
        return InvalidInput(self.field, f"{self.problem} (expected {self.message_type})")


def _check_unknown(msg: _message.Message, path: str) -> MalformedRequest | None:
    descriptor = msg.DESCRIPTOR
    for unknown in UnknownFieldSet(msg):  # type: ignore[attr-defined]
        field = descriptor.fields_by_number.get(unknown.field_number)
        if field is not None:
            return MalformedRequest(
                descriptor.full_name,
                f"{path}{field.name}",
                f"wrong type on the wire ({_WIRE_TYPES.get(unknown.wire_type, unknown.wire_type)})",
            )
    for field, value in msg.ListFields():
        if field.type != _descriptor.FieldDescriptor.TYPE_MESSAGE:
            continue
        if (
            field.is_repeated
            and field.message_type is not None
            and not field.message_type.GetOptions().map_entry
        ):
            for index, item in enumerate(value):
                found = _check_unknown(item, f"{path}{field.name}[{index}].")
                if found:
                    return found
        elif not field.is_repeated:
            found = _check_unknown(value, f"{path}{field.name}.")
            if found:
                return found
    return None


def lenient_decoder(message_class: type[_message.Message]) -> Callable[[bytes], Any]:
    """Decoder that returns a MalformedRequest instead of raising."""
    name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            msg = message_class.FromString(data)
        except Exception as exc:
            return MalformedRequest(name, "request", f"does not decode: {exc}")
        return _check_unknown(msg, "") or msg

    return decode


def check_request(request: Any) -> None:
    """Raises INVALID_ARGUMENT for a MalformedRequest."""
    if isinstance(request, MalformedRequest):
        raise request.error()


def add_servicer(server: grpc.aio.Server, servicer: Any, service: _descriptor.ServiceDescriptor) -> None:
    """Adds every method of `service` that `servicer` implements, with lenient decoding."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            continue
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        kwargs: dict[str, Any] = {
            "request_deserializer": lenient_decoder(request_class),
            "response_serializer": response_class.SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour, **kwargs)
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(behaviour, **kwargs)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(behaviour, **kwargs)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour, **kwargs)
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
