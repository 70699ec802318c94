"""Open Inference Protocol on the embedding service, called by an existing v2 client unchanged.

Requests are built with tritonclient (PyPI) and its generated stubs of the official
`inference` proto, as the protocol's documentation shows them, and sent over real gRPC on
loopback to a real embedding service (real model, batcher and in-memory cache).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from textserve.core.cache import build_cache
from textserve.core.config import CacheConfig
from textserve.core.metrics import REGISTRY
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.oip_client import official
from tests.support import embedding_config, start_host

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "emoji 🚀 and café"]


@pytest.fixture(scope="module")
def v2() -> SimpleNamespace:
    return official()


@pytest.fixture(scope="module")
async def address(onnx_cache_dir: Any) -> AsyncIterator[str]:
    """An embedding service with an in-memory response cache, on a free loopback port."""
    from textserve.embedding.app import EmbeddingApp

    cache = build_cache(CacheConfig(backend="memory"), "embedding")
    host: ServiceHost = await start_host([EmbeddingApp(embedding_config(), cache)])
    yield f"127.0.0.1:{host.port_of('embedding')}"
    await host.stop(grace=1.0)


@pytest.fixture
async def client(v2: SimpleNamespace, address: str) -> AsyncIterator[Any]:
    """tritonclient's asyncio client, as a KServe/Triton user creates it."""
    async with v2.aio.InferenceServerClient(url=address) as triton:
        yield triton


@pytest.fixture
async def stub(v2: SimpleNamespace, address: str) -> AsyncIterator[Any]:
    """The official generated GRPCInferenceService stub, for hand-built requests."""
    async with grpc.aio.insecure_channel(address) as channel:
        yield v2.service_pb2_grpc.GRPCInferenceServiceStub(channel)


def text_input(v2: SimpleNamespace, texts: list[str], shape: list[int] | None = None) -> Any:
    tensor = v2.grpc.InferInput("text_input", shape or [len(texts)], "BYTES")
    tensor.set_data_from_numpy(
        np.array([t.encode() for t in texts], dtype=np.object_).reshape(tensor.shape())
    )
    return tensor


def typed_request(v2: SimpleNamespace, texts: list[str], **overrides: Any) -> Any:
    """A ModelInferRequest with typed contents, field by field as the protocol documents it."""
    pb = v2.service_pb2
    request = pb.ModelInferRequest(model_name=overrides.pop("model_name", MODEL), id="req-1")
    tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    for key, value in overrides.items():
        setattr(request, key, value)
    return request


async def native_vectors(address: str, texts: list[str]) -> np.ndarray:
    async with grpc.aio.insecure_channel(address) as channel:
        native = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response = await native.Embed(embedding_pb2.EmbedRequest(texts=texts, skip_cache=True))
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- server and model metadata ------------------------------------------------------------
async def test_server_live_ready_and_metadata(client: Any) -> None:
    assert await client.is_server_live()
    assert await client.is_server_ready()
    metadata = await client.get_server_metadata()
    assert metadata.name == "textserve"
    assert metadata.version
    assert "parameters" in metadata.extensions


async def test_model_ready_by_name_alias_and_version(client: Any, v2: SimpleNamespace) -> None:
    metadata = await client.get_model_metadata(MODEL)
    revision = metadata.versions[0]
    assert await client.is_model_ready(MODEL)
    assert await client.is_model_ready("embedding")
    assert await client.is_model_ready(MODEL, model_version=revision)
    for name, version in (("no-such-model", ""), (MODEL, "not-a-revision")):
        with pytest.raises(v2.utils.InferenceServerException) as caught:
            await client.is_model_ready(name, model_version=version)
        assert caught.value.status() == "StatusCode.NOT_FOUND"
        assert repr(version or name) in caught.value.message()


async def test_model_metadata_describes_tensors(client: Any) -> None:
    metadata = await client.get_model_metadata("embedding")
    assert metadata.name == MODEL
    assert len(metadata.versions) == 1 and metadata.versions[0]
    assert metadata.platform == "onnxruntime"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("text_input", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("embedding", "FP32", [-1, 384])
    ]


# --- inference ----------------------------------------------------------------------------
async def test_infer_raw_contents_matches_native_api(client: Any, v2: SimpleNamespace, address: str) -> None:
    """tritonclient sends raw_input_contents; the answer mirrors it in raw_output_contents."""
    result = await client.infer(MODEL, [text_input(v2, TEXTS)], request_id="abc")
    response = result.get_response()
    assert response.id == "abc" and response.model_name == MODEL
    assert len(response.raw_output_contents) == 1 and not response.outputs[0].HasField("contents")
    vectors = result.as_numpy("embedding")
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(vectors, await native_vectors(address, TEXTS), rtol=1e-5, atol=1e-6)
    assert response.parameters["input_tokens"].int64_param > len(TEXTS)


async def test_infer_typed_contents_and_n_by_1_shape(stub: Any, v2: SimpleNamespace, address: str) -> None:
    request = typed_request(v2, TEXTS)
    request.inputs[0].shape[:] = [len(TEXTS), 1]
    response = await stub.ModelInfer(request)
    assert not response.raw_output_contents
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("embedding", "FP32", [3, 384])
    vectors = np.array(output.contents.fp32_contents, dtype=np.float32).reshape(3, 384)
    np.testing.assert_allclose(vectors, await native_vectors(address, TEXTS), rtol=1e-5, atol=1e-6)


async def test_raw_outputs_on_request(stub: Any, v2: SimpleNamespace) -> None:
    """binary_data on a requested output, or binary_data_output on the request, selects raw outputs."""
    per_output = typed_request(v2, TEXTS[:1])
    per_output.outputs.add(name="embedding").parameters["binary_data"].bool_param = True
    whole = typed_request(v2, TEXTS[:1])
    whole.parameters["binary_data_output"].bool_param = True
    typed = await stub.ModelInfer(typed_request(v2, TEXTS[:1]))
    expected = np.array(typed.outputs[0].contents.fp32_contents, dtype=np.float32)
    for request in (per_output, whole):
        response = await stub.ModelInfer(request)
        assert not response.outputs[0].HasField("contents")
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], dtype="<f4"), expected)


async def test_raw_inputs_with_typed_outputs(stub: Any, v2: SimpleNamespace) -> None:
    request = v2.service_pb2.ModelInferRequest(model_name="embedding")
    request.inputs.add(name="text_input", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(t)) + t for t in (b"one", b"two")))
    request.outputs.add(name="embedding").parameters["binary_data"].bool_param = False
    response = await stub.ModelInfer(request)
    assert not response.raw_output_contents
    assert len(response.outputs[0].contents.fp32_contents) == 2 * 384


async def test_parameters_reach_the_service(client: Any, v2: SimpleNamespace) -> None:
    result = await client.infer(MODEL, [text_input(v2, TEXTS)], parameters={"normalize": True})
    np.testing.assert_allclose(np.linalg.norm(result.as_numpy("embedding"), axis=1), 1.0, rtol=1e-5)
    with pytest.raises(v2.utils.InferenceServerException) as caught:
        await client.infer(MODEL, [text_input(v2, ["word " * 400])], parameters={"truncate": False})
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message().startswith("inputs[text_input][0]: has ")
    with pytest.raises(v2.utils.InferenceServerException) as caught:
        await client.infer(MODEL, [text_input(v2, TEXTS)], parameters={"normalize": "yes please"})
    assert caught.value.message().startswith("parameters[normalize]: must be a bool")


async def test_cache_is_shared_with_native_api(client: Any, v2: SimpleNamespace, address: str) -> None:
    text = "a sentence only this test embeds"
    first = await client.infer(MODEL, [text_input(v2, [text])])
    assert first.get_response().parameters["cached_texts"].int64_param == 0
    async with grpc.aio.insecure_channel(address) as channel:
        native = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response = await native.Embed(embedding_pb2.EmbedRequest(texts=[text]))
    assert response.usage.cached_texts == 1
    np.testing.assert_allclose(first.as_numpy("embedding")[0], response.embeddings[0].values, rtol=1e-6)


async def test_requests_are_counted_and_batched(client: Any, v2: SimpleNamespace) -> None:
    ok = {"service": "embedding", "method": "ModelInfer", "code": "OK"}
    bad = {**ok, "code": "INVALID_ARGUMENT"}
    batches = {"service": "embedding", "model": MODEL, "version": "1"}
    before = (
        sample("textserve_requests_total", ok),
        sample("textserve_requests_total", bad),
        sample("textserve_batch_size_sum", batches),
    )
    await client.infer(
        MODEL, [text_input(v2, ["counted once", "and twice"])], parameters={"skip_cache": True}
    )
    with pytest.raises(v2.utils.InferenceServerException):
        await client.infer(MODEL, [text_input(v2, [""])])
    assert sample("textserve_requests_total", ok) == before[0] + 1
    assert sample("textserve_requests_total", bad) == before[1] + 1
    assert sample("textserve_batch_size_sum", batches) >= before[2] + 2


# --- errors -------------------------------------------------------------------------------
def _bad_requests(v2: SimpleNamespace) -> list[tuple[str, Any, grpc.StatusCode, str]]:
    pb = v2.service_pb2
    cases: list[tuple[str, Any, grpc.StatusCode, str]] = []

    def case(name: str, code: grpc.StatusCode, starts: str, **overrides: Any) -> Any:
        request = typed_request(v2, ["one", "two"], **overrides)
        cases.append((name, request, code, starts))
        return request

    case("unknown model", grpc.StatusCode.NOT_FOUND, "unknown model 'nope'", model_name="nope")
    case(
        "unknown version", grpc.StatusCode.NOT_FOUND, f"model '{MODEL}' has no version '7'", model_version="7"
    )
    case("no model name", grpc.StatusCode.INVALID_ARGUMENT, "model_name: is required", model_name="")
    request = case(
        "wrong datatype", grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input].datatype: is 'FP32'"
    )
    request.inputs[0].datatype = "FP32"
    request = case("matrix shape", grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input].shape: is [1, 2]")
    request.inputs[0].shape[:] = [1, 2]
    request = case(
        "count vs shape", grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input]: shape [3] needs 3"
    )
    request.inputs[0].shape[:] = [3]
    request = case(
        "typed wrong field", grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input].contents: BYTES"
    )
    request.inputs[0].contents.fp32_contents.append(1.0)
    request = case("unknown input", grpc.StatusCode.INVALID_ARGUMENT, "inputs[prompt]: is not an input")
    request.inputs[0].name = "prompt"
    request = case("duplicate input", grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input]: is given more")
    request.inputs.add().CopyFrom(request.inputs[0])
    request = case("empty text", grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input][1]: must not be empty")
    request.inputs[0].contents.bytes_contents[1] = b""
    request = case("not utf-8", grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input][0]: is not valid UTF-8")
    request.inputs[0].contents.bytes_contents[0] = b"\xff\xfe"
    request = case("unknown output", grpc.StatusCode.INVALID_ARGUMENT, "outputs[scores]: is not an output")
    request.outputs.add(name="scores")
    request = case("raw and typed", grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input]: has both contents")
    request.raw_input_contents.append(struct.pack("<I", 1) + b"a")
    request = case(
        "classification", grpc.StatusCode.INVALID_ARGUMENT, "outputs[embedding].parameters[classif"
    )
    request.outputs.add(name="embedding").parameters["classification"].int64_param = 3
    request = case(
        "shared memory", grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input].parameters[shared_mem"
    )
    request.inputs[0].parameters["shared_memory_region"].string_param = "region"
    raw = pb.ModelInferRequest(model_name=MODEL)
    raw.inputs.add(name="text_input", datatype="BYTES", shape=[2])
    raw.raw_input_contents.append(struct.pack("<I", 3) + b"one" + struct.pack("<I", 9) + b"two")
    cases.append(("raw overrun", raw, grpc.StatusCode.INVALID_ARGUMENT, "inputs[text_input]: raw contents"))
    extra = pb.ModelInferRequest(model_name=MODEL)
    extra.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    extra.raw_input_contents.extend([struct.pack("<I", 1) + b"a", b""])
    cases.append(("raw count", extra, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents: has 2 entries"))
    return cases


async def test_bad_requests_are_rejected_naming_the_problem(stub: Any, v2: SimpleNamespace) -> None:
    for name, request, code, starts in _bad_requests(v2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(request)
        assert caught.value.code() == code, name
        assert caught.value.details().startswith(starts), (name, caught.value.details())


async def test_metadata_of_unknown_model_is_not_found(client: Any, v2: SimpleNamespace) -> None:
    with pytest.raises(v2.utils.InferenceServerException) as caught:
        await client.get_model_metadata("gpt-17")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert MODEL in caught.value.message()  # says what is served


# --- streaming ----------------------------------------------------------------------------
async def test_stream_infer_answers_each_request_and_reports_errors_in_band(
    client: Any, v2: SimpleNamespace, address: str
) -> None:
    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": MODEL, "inputs": [text_input(v2, TEXTS[:2])], "request_id": "first"}
        yield {"model_name": "nope", "inputs": [text_input(v2, TEXTS[:1])], "request_id": "lost"}
        yield {"model_name": "embedding", "inputs": [text_input(v2, TEXTS[2:])], "request_id": "last"}

    answers: dict[str, Any] = {}
    errors: list[str] = []
    async for result, error in client.stream_infer(requests()):
        if error is not None:
            errors.append(error.message())
        else:
            answers[result.get_response().id] = result
    assert errors == [
        "NOT_FOUND: unknown model 'nope'; this server serves 'all-MiniLM-L6-v2' (alias 'embedding')"
    ]
    assert set(answers) == {"first", "last"}
    for answer in answers.values():
        assert answer.get_response().parameters["triton_final_response"].bool_param
    expected = await native_vectors(address, TEXTS)
    np.testing.assert_allclose(answers["first"].as_numpy("embedding"), expected[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(answers["last"].as_numpy("embedding"), expected[2:], rtol=1e-5, atol=1e-6)


async def test_stream_empty_final_response(stub: Any, v2: SimpleNamespace) -> None:
    request = typed_request(v2, TEXTS[:1])
    request.parameters["triton_enable_empty_final_response"].bool_param = True

    async def one() -> AsyncIterator[Any]:
        yield request

    responses = [item async for item in stub.ModelStreamInfer(one())]
    assert [r.error_message for r in responses] == ["", ""]
    first, last = (r.infer_response for r in responses)
    assert first.outputs[0].name == "embedding" and not first.parameters["triton_final_response"].bool_param
    assert not last.outputs and last.parameters["triton_final_response"].bool_param and last.id == "req-1"


# --- discovery ----------------------------------------------------------------------------
async def test_health_and_reflection_include_the_protocol(address: str) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        async def ask() -> AsyncIterator[Any]:
            yield reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            )

        async for reply in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(ask()):
            assert reply.file_descriptor_response.file_descriptor_proto, reply
