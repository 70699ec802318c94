"""Our protos/inference/grpc_predict_v2.proto is wire-identical to the official protocol proto.

The reference is the generated descriptor tritonclient (PyPI) ships for the `inference`
package (Triton's grpc_service.proto, a superset of KServe's grpc_predict_v2.proto).
Every message, field and RPC we define must exist there under the same full name, number,
type and cardinality, so requests from existing clients decode unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor as _descriptor
from textserve.oip import grpc_predict_v2_pb2 as ours

from tests.oip_client import official

SPEC_RPCS = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"}


@pytest.fixture(scope="module")
def theirs() -> Any:
    return official().service_pb2


def _messages(message: _descriptor.Descriptor) -> list[_descriptor.Descriptor]:
    found = [message]
    for nested in message.nested_types:
        found.extend(_messages(nested))
    return found


def test_package_and_service_names(theirs: Any) -> None:
    assert ours.DESCRIPTOR.package == theirs.DESCRIPTOR.package == "inference"
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    repository = {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}
    assert {m.name for m in service.methods} == SPEC_RPCS | {"ModelStreamInfer"} | repository


def test_every_rpc_matches_the_official_one(theirs: Any) -> None:
    official_service = theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        other = official_service.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name, method.name
        assert method.output_type.full_name == other.output_type.full_name, method.name
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        ), method.name


def test_every_field_matches_the_official_one(theirs: Any) -> None:
    pool = theirs.DESCRIPTOR.pool
    checked = 0
    for top in ours.DESCRIPTOR.message_types_by_name.values():
        for message in _messages(top):
            other = pool.FindMessageTypeByName(message.full_name)
            assert {f.name for f in message.fields} == {f.name for f in other.fields}, message.full_name
            for field in message.fields:
                twin = other.fields_by_name[field.name]
                where = f"{message.full_name}.{field.name}"
                assert field.number == twin.number, where
                assert field.type == twin.type, where
                assert field.is_repeated == twin.is_repeated, where
                if field.message_type is not None:
                    assert field.message_type.full_name == twin.message_type.full_name, where
                oneof = field.containing_oneof.name if field.containing_oneof else None
                assert oneof == (twin.containing_oneof.name if twin.containing_oneof else None), where
                checked += 1
    assert checked > 50


def test_a_full_official_request_round_trips_through_ours(theirs: Any) -> None:
    request = theirs.ModelInferRequest(model_name="m", model_version="1", id="x")
    request.parameters["p"].double_param = 0.5
    request.parameters["q"].uint64_param = 7
    tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[2, 1])
    tensor.parameters["b"].bool_param = True
    tensor.contents.bytes_contents.extend([b"a", b"b"])
    request.outputs.add(name="o").parameters["binary_data"].bool_param = True
    request.raw_input_contents.append(b"\x01\x00\x00\x00z")
    wire = request.SerializeToString(deterministic=True)
    parsed = ours.ModelInferRequest.FromString(wire)
    assert parsed.SerializeToString(deterministic=True) == wire
    assert parsed.parameters["p"].double_param == 0.5 and parsed.inputs[0].shape == [2, 1]
