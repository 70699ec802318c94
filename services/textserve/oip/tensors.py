"""Open Inference Protocol tensors <-> Python values: BYTES, FP32, INT64 codecs, shape checks.

Inputs come either as typed `contents` or, for every input at once, in
`raw_input_contents` (BYTES elements as a 4-byte little-endian length then the bytes).
Text inputs are BYTES tensors of shape [N] or [N, 1]. Outputs are written as typed
contents or, when the request asks for binary data, as `raw_output_contents` (FP32 and
INT64 as little-endian float32 and int64). Every error is INVALID_ARGUMENT naming the
input or output.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textserve.core.errors import InvalidInput
from textserve.oip import grpc_predict_v2_pb2 as pb
from textserve.oip.model import BYTES, FP32, INT64, OutputTensor, TensorSpec, input_field
from textserve.oip.parameters import Parameters

_LENGTH = struct.Struct("<I")

BINARY_DATA = "binary_data"
"""Requested-output parameter asking for that output in raw_output_contents."""
BINARY_DATA_OUTPUT = "binary_data_output"
"""Request parameter asking for every output in raw_output_contents (Triton)."""
_UNSUPPORTED = {
    "shared_memory_region": "shared-memory tensors are not supported; send the data in the request",
    "classification": "the classification extension is not supported",
}
"""Tensor parameters of Triton extensions we do not serve; ignoring them would give wrong answers."""


def _check_supported(parameters: Any, field: str) -> None:
    for key, problem in _UNSUPPORTED.items():
        if key in parameters:
            raise InvalidInput(f"{field}.parameters[{key}]", problem)


def output_field(name: str) -> str:
    """How errors name a requested output: outputs[name]."""
    return f"outputs[{name}]"


# --- BYTES raw encoding --------------------------------------------------------------------
def pack_bytes(items: Sequence[bytes]) -> bytes:
    """Elements as the protocol's raw BYTES layout: length (uint32 LE) + content, repeated."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def unpack_bytes(data: bytes, field: str) -> list[bytes]:
    """The elements of a raw BYTES tensor; InvalidInput when a length runs past the end."""
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise InvalidInput(field, f"raw contents end inside the length prefix of element {len(items)}")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise InvalidInput(
                field,
                f"raw contents: element {len(items)} declares {length} bytes but only "
                f"{len(data) - offset} remain",
            )
        items.append(data[offset : offset + length])
        offset += length
    return items


# --- inputs ------------------------------------------------------------------------------
def text_rows(shape: Sequence[int], field: str) -> int:
    """N of a text tensor of shape [N] or [N, 1]."""
    dims = list(shape)
    if len(dims) == 1 or (len(dims) == 2 and dims[1] == 1):
        if dims[0] < 0:
            raise InvalidInput(f"{field}.shape", f"is {dims}; dimensions must not be negative")
        return dims[0]
    raise InvalidInput(f"{field}.shape", f"is {dims}; text inputs take shape [N] or [N, 1]")


def _has_typed_contents(tensor: pb.ModelInferRequest.InferInputTensor) -> bool:
    return tensor.HasField("contents") and tensor.contents.ByteSize() > 0


def decode_text(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> list[str]:
    """The UTF-8 texts of one BYTES input, from typed contents or its raw contents."""
    field = input_field(tensor.name)
    _check_supported(tensor.parameters, field)
    if tensor.datatype != BYTES:
        raise InvalidInput(f"{field}.datatype", f"is {tensor.datatype or 'empty'!r}; expected BYTES")
    rows = text_rows(tensor.shape, field)
    if raw is not None:
        if _has_typed_contents(tensor):
            raise InvalidInput(field, "has both contents and raw_input_contents; send one")
        items = unpack_bytes(raw, field)
    else:
        contents = tensor.contents
        other = [f.name for f, _ in contents.ListFields() if f.name != "bytes_contents"]
        if other:
            raise InvalidInput(f"{field}.contents", f"BYTES values go in bytes_contents, not {other[0]}")
        items = list(contents.bytes_contents)
    if len(items) != rows:
        raise InvalidInput(field, f"shape {list(tensor.shape)} needs {rows} elements; got {len(items)}")
    texts: list[str] = []
    for index, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise InvalidInput(f"{field}[{index}]", f"is not valid UTF-8 ({error.reason})") from None
    return texts


def decode_inputs(request: pb.ModelInferRequest, specs: Sequence[TensorSpec]) -> dict[str, list[str]]:
    """The texts of every input of the request, checked against the model's inputs."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            "raw_input_contents",
            f"has {len(raw)} entries for {len(request.inputs)} inputs; send one per input or none",
        )
    by_name = {spec.name: spec for spec in specs}
    texts: dict[str, list[str]] = {}
    for index, tensor in enumerate(request.inputs):
        spec = by_name.get(tensor.name)
        if spec is None:
            expected = ", ".join(s.describe() for s in specs)
            raise InvalidInput(
                input_field(tensor.name), f"is not an input of this model; it takes {expected}"
            )
        if tensor.name in texts:
            raise InvalidInput(input_field(tensor.name), "is given more than once")
        if spec.datatype != BYTES:  # pragma: no cover - every model input today is text
            raise InvalidInput(input_field(tensor.name), f"{spec.datatype} inputs are not supported")
        texts[tensor.name] = decode_text(tensor, raw[index] if raw else None)
    for spec in specs:
        if not spec.optional and spec.name not in texts:
            raise InvalidInput(input_field(spec.name), f"is missing; this model takes {spec.describe()}")
    return texts


# --- outputs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputPlan:
    """Which outputs to return, in which order, and whether as raw_output_contents."""

    names: tuple[str, ...]
    raw: bool


def plan_outputs(request: pb.ModelInferRequest, specs: Sequence[TensorSpec]) -> OutputPlan:
    """Checks the requested outputs and decides the encoding.

    Raw contents when the request parameter binary_data_output or any output's
    binary_data is true; typed contents when they are given and all false; otherwise the
    response mirrors the request (raw inputs -> raw outputs, as KServe servers do).
    """
    known = [spec.name for spec in specs]
    choices: list[bool] = []
    request_choice = Parameters.of(request.parameters).get_bool(BINARY_DATA_OUTPUT, None)
    if request_choice is not None:
        choices.append(request_choice)
    names: list[str] = []
    for output in request.outputs:
        field = output_field(output.name)
        if output.name not in known:
            raise InvalidInput(field, f"is not an output of this model; it has {', '.join(known)}")
        if output.name in names:
            raise InvalidInput(field, "is requested more than once")
        _check_supported(output.parameters, field)
        names.append(output.name)
        choice = Parameters.of(output.parameters, f"{field}.parameters").get_bool(BINARY_DATA, None)
        if choice is not None:
            choices.append(choice)
    raw = any(choices) if choices else len(request.raw_input_contents) > 0
    return OutputPlan(tuple(names) or tuple(known), raw)


def _check_size(output: OutputTensor, count: int) -> None:
    expected = math.prod(output.shape)
    if count != expected:  # a bug in an adapter, not a client error
        raise ValueError(f"output {output.name}: {count} values for shape {list(output.shape)}")


_NUMERIC_OUTPUTS = {FP32: ("<f4", "fp32_contents"), INT64: ("<i8", "int64_contents")}
"""Numeric output datatypes: little-endian numpy dtype and the typed contents field."""


def encode_output(response: pb.ModelInferResponse, output: OutputTensor, raw: bool) -> None:
    """Appends one output tensor to the response (typed contents or raw_output_contents)."""
    tensor = response.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.shape))
    if output.datatype in _NUMERIC_OUTPUTS:
        dtype, contents = _NUMERIC_OUTPUTS[output.datatype]
        array = np.ascontiguousarray(np.asarray(output.values, dtype=dtype))
        _check_size(output, array.size)
        if raw:
            response.raw_output_contents.append(array.tobytes())
        else:
            getattr(tensor.contents, contents).extend(array.ravel().tolist())
    elif output.datatype == BYTES:
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in output.values]
        _check_size(output, len(items))
        if raw:
            response.raw_output_contents.append(pack_bytes(items))
        else:
            tensor.contents.bytes_contents.extend(items)
    else:  # pragma: no cover - adapters only produce FP32, INT64 and BYTES
        raise ValueError(f"output {output.name}: unsupported datatype {output.datatype}")
