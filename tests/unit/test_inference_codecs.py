"""Tensor and parameter codecs of the Open Inference Protocol front (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest
from textserve.core.errors import InvalidInput, NotFound
from textserve.oip import grpc_predict_v2_pb2 as pb
from textserve.oip import parameters, tensors
from textserve.oip.model import BYTES, FP32, OutputTensor, TensorSpec, rename_fields
from textserve.oip.parameters import Parameters

SPECS = (TensorSpec("text_input", BYTES, (-1,)),)


def test_raw_bytes_round_trip() -> None:
    items = [b"", "café 🚀".encode(), b"x" * 1000]
    packed = tensors.pack_bytes(items)
    assert packed[:4] == b"\x00\x00\x00\x00"
    assert tensors.unpack_bytes(packed, "f") == items
    assert tensors.unpack_bytes(b"", "f") == []


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"\x05\x00", "inside the length prefix of element 0"), (b"\x05\x00\x00\x00abc", "declares 5 bytes")],
)
def test_raw_bytes_overrun_names_the_input(data: bytes, problem: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        tensors.unpack_bytes(data, "inputs[text_input]")
    assert caught.value.field == "inputs[text_input]" and problem in caught.value.message


@pytest.mark.parametrize(("shape", "rows"), [([3], 3), ([3, 1], 3), ([0], 0)])
def test_text_shapes(shape: list[int], rows: int) -> None:
    assert tensors.text_rows(shape, "inputs[t]") == rows


@pytest.mark.parametrize("shape", [[], [2, 2], [1, 1, 1], [-1]])
def test_bad_text_shapes(shape: list[int]) -> None:
    with pytest.raises(InvalidInput) as caught:
        tensors.text_rows(shape, "inputs[t]")
    assert caught.value.field == "inputs[t].shape"


def test_decode_inputs_typed_and_raw_agree() -> None:
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="text_input", datatype=BYTES, shape=[2]).contents.bytes_contents.extend(
        [b"a", b"b"]
    )
    raw = pb.ModelInferRequest()
    raw.inputs.add(name="text_input", datatype=BYTES, shape=[2, 1])
    raw.raw_input_contents.append(tensors.pack_bytes([b"a", b"b"]))
    assert (
        tensors.decode_inputs(typed, SPECS) == tensors.decode_inputs(raw, SPECS) == {"text_input": ["a", "b"]}
    )


def test_missing_required_input_is_named() -> None:
    with pytest.raises(InvalidInput) as caught:
        tensors.decode_inputs(pb.ModelInferRequest(), SPECS)
    assert caught.value.message == "inputs[text_input]: is missing; this model takes text_input (BYTES [-1])"
    optional = (TensorSpec("labels", BYTES, (-1,), optional=True),)
    assert tensors.decode_inputs(pb.ModelInferRequest(), optional) == {}


def _request(
    raw_inputs: bool = False, request_param: bool | None = None, **outputs: bool | None
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    if raw_inputs:
        request.raw_input_contents.append(b"")
    if request_param is not None:
        request.parameters["binary_data_output"].bool_param = request_param
    for name, binary in outputs.items():
        output = request.outputs.add(name=name)
        if binary is not None:
            output.parameters["binary_data"].bool_param = binary
    return request


@pytest.mark.parametrize(
    ("request_", "names", "raw"),
    [
        (_request(), ("scores", "labels"), False),
        (_request(raw_inputs=True), ("scores", "labels"), True),
        (_request(raw_inputs=True, request_param=False), ("scores", "labels"), False),
        (_request(request_param=True), ("scores", "labels"), True),
        (_request(labels=None), ("labels",), False),
        (_request(labels=True, scores=False), ("labels", "scores"), True),
        (_request(raw_inputs=True, labels=False), ("labels",), False),
    ],
)
def test_output_plan(request_: pb.ModelInferRequest, names: tuple[str, ...], raw: bool) -> None:
    specs = (TensorSpec("scores", FP32, (-1, 2)), TensorSpec("labels", BYTES, (-1, 2)))
    assert tensors.plan_outputs(request_, specs) == tensors.OutputPlan(names, raw)


def test_encode_outputs_typed_and_raw() -> None:
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    outputs = [OutputTensor("v", FP32, (2, 3), vectors), OutputTensor("t", BYTES, (2,), ["é", b"b"])]
    typed, raw = pb.ModelInferResponse(), pb.ModelInferResponse()
    for output in outputs:
        tensors.encode_output(typed, output, raw=False)
        tensors.encode_output(raw, output, raw=True)
    assert list(typed.outputs[0].contents.fp32_contents) == vectors.ravel().tolist()
    assert list(typed.outputs[1].contents.bytes_contents) == ["é".encode(), b"b"]
    np.testing.assert_array_equal(np.frombuffer(raw.raw_output_contents[0], "<f4").reshape(2, 3), vectors)
    assert tensors.unpack_bytes(raw.raw_output_contents[1], "t") == ["é".encode(), b"b"]
    assert [list(o.shape) for o in raw.outputs] == [[2, 3], [2]] and not raw.outputs[0].HasField("contents")
    with pytest.raises(ValueError):
        tensors.encode_output(typed, OutputTensor("v", FP32, (3, 3), vectors), raw=False)


def test_parameters_round_trip_and_typed_getters() -> None:
    request = pb.ModelInferRequest()
    parameters.encode(request.parameters, {"b": True, "i": 5, "f": 0.25, "s": "x"})
    assert [request.parameters[k].WhichOneof("parameter_choice") for k in "bifs"] == [
        "bool_param",
        "int64_param",
        "double_param",
        "string_param",
    ]
    request.parameters["u"].uint64_param = 9
    values = Parameters.of(request.parameters)
    assert values.values == {"b": True, "i": 5, "f": 0.25, "s": "x", "u": 9}
    assert values.get_bool("b", False) is True and values.get_bool("absent", None) is None
    assert values.get_int("u", 0, minimum=0, maximum=10) == 9
    assert values.get_float("i", 0.0, minimum=0, maximum=10) == 5.0
    assert values.get_str("s", "") == "x"
    assert values.unknown(["b", "i"]) == ["f", "s", "u"]
    assert Parameters({"flag": "TRUE", "n": 3.0}).get_bool("flag", False) is True
    assert Parameters({"n": 3.0}).get_int("n", 0, minimum=0, maximum=5) == 3


@pytest.mark.parametrize(
    ("values", "call", "message"),
    [
        ({"b": "maybe"}, lambda p: p.get_bool("b", False), "parameters[b]: must be a bool"),
        ({"i": 0.5}, lambda p: p.get_int("i", 0, minimum=0, maximum=9), "parameters[i]: must be an integer"),
        ({"i": 10}, lambda p: p.get_int("i", 0, minimum=0, maximum=9), "parameters[i]: is 10; allowed range"),
        (
            {"f": "hot"},
            lambda p: p.get_float("f", 0.0, minimum=0, maximum=2),
            "parameters[f]: must be a number",
        ),
        ({"f": 2.5}, lambda p: p.get_float("f", 0.0, minimum=0, maximum=2), "parameters[f]: is 2.5"),
        ({"s": 1}, lambda p: p.get_str("s", ""), "parameters[s]: must be a string"),
    ],
)
def test_bad_parameters_are_named(
    values: dict[str, parameters.ParamValue], call: object, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        call(Parameters(values))  # type: ignore[operator]
    assert caught.value.message.startswith(message)


def test_rename_fields_maps_service_fields_to_protocol_names() -> None:
    renames = {"texts": "inputs[text_input]", "params.top_p": "parameters[top_p]"}
    renamed = rename_fields(InvalidInput("texts[2]", "must not be empty"), renames)
    assert renamed.message == "inputs[text_input][2]: must not be empty"
    whole = rename_fields(InvalidInput("texts", "has 300 texts"), renames)
    assert whole.message == "inputs[text_input]: has 300 texts"
    assert rename_fields(InvalidInput("params.top_p", "x"), renames).message == "parameters[top_p]: x"
    other = NotFound("x")
    assert rename_fields(other, renames) is other
    unrelated = InvalidInput("textsize", "x")
    assert rename_fields(unrelated, renames) is unrelated


def test_rename_fields_reads_the_field_and_problem_not_the_message() -> None:
    """A forwarded InvalidInput keeps the message as sent; the rename uses its field and problem."""
    forwarded = InvalidInput("texts[1]", "must not be empty", message="worded otherwise by the service")
    renamed = rename_fields(forwarded, {"texts": "inputs[text_input]"})
    assert isinstance(renamed, InvalidInput)
    assert (renamed.field, renamed.problem) == ("inputs[text_input][1]", "must not be empty")
    assert renamed.message == "inputs[text_input][1]: must not be empty"
