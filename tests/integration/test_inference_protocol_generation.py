"""Open Inference Protocol on the generation service, called by an existing v2 client unchanged.

A tiny randomly initialised causal LM (`builtin:random`, chosen explicitly) serves real
gRPC on loopback; requests come from tritonclient and its generated stubs of the official
proto. Correctness is agreement with the native Generate API, not prose quality.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from textserve.core.cache import build_cache
from textserve.core.config import CacheConfig, ModelConfig
from textserve.core.metrics import REGISTRY
from textserve.generation.config import GenerationServiceConfig
from textserve.runtime.demo_lm import RANDOM_MODEL_PATH
from textserve.transport.server import ServiceHost
from textserve.v1 import generation_pb2, generation_pb2_grpc

from tests.oip_client import official
from tests.support import loopback_server, start_host

PROMPT = "The quick brown fox"
GREEDY = {"max_tokens": 12, "ignore_eos": True}


@pytest.fixture(scope="module")
def v2() -> SimpleNamespace:
    return official()


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    from textserve.generation.app import GenerationApp

    config = GenerationServiceConfig(
        server=loopback_server(),
        model=ModelConfig(path=RANDOM_MODEL_PATH, backend="torch"),
        max_new_tokens_default=8,
    )
    host: ServiceHost = await start_host([GenerationApp(config, build_cache(CacheConfig(), "generation"))])
    yield f"127.0.0.1:{host.port_of('generation')}"
    await host.stop(grace=1.0)


@pytest.fixture
async def client(v2: SimpleNamespace, address: str) -> AsyncIterator[Any]:
    async with v2.aio.InferenceServerClient(url=address) as triton:
        yield triton


@pytest.fixture
async def stub(v2: SimpleNamespace, address: str) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield v2.service_pb2_grpc.GRPCInferenceServiceStub(channel)


def prompt_input(v2: SimpleNamespace, prompts: list[str]) -> Any:
    tensor = v2.grpc.InferInput("text_input", [len(prompts)], "BYTES")
    tensor.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=np.object_))
    return tensor


async def native_text(address: str, max_new_tokens: int) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        native = generation_pb2_grpc.GenerationServiceStub(channel)
        response = await native.Generate(
            generation_pb2.GenerateRequest(
                prompt=PROMPT,
                params=generation_pb2.SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
                skip_cache=True,
            )
        )
    return response.text


async def test_model_metadata(client: Any) -> None:
    assert await client.is_server_ready()
    assert await client.is_model_ready("generation")
    metadata = await client.get_model_metadata("generation")
    assert await client.is_model_ready(metadata.name, model_version=metadata.versions[0])
    assert metadata.platform == "torch"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("text_input", "BYTES", [1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("text_output", "BYTES", [1])]


async def test_infer_matches_native_generate_and_uses_the_cache(
    client: Any, v2: SimpleNamespace, address: str
) -> None:
    first = await client.infer("generation", [prompt_input(v2, [PROMPT])], parameters=GREEDY)
    again = await client.infer("generation", [prompt_input(v2, [PROMPT])], parameters=GREEDY)
    (text,) = first.as_numpy("text_output")
    assert text.decode() == await native_text(address, 12)
    response = first.get_response()
    assert response.parameters["finish_reason"].string_param == "length"
    assert response.parameters["output_tokens"].int64_param == 12
    assert response.parameters["prompt_tokens"].int64_param > 0
    assert again.get_response().parameters["cached"].bool_param
    assert again.as_numpy("text_output")[0] == text


async def test_typed_contents_and_shape_1_by_1(stub: Any, v2: SimpleNamespace, address: str) -> None:
    request = v2.service_pb2.ModelInferRequest(model_name="generation")
    tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[1, 1])
    tensor.contents.bytes_contents.append(PROMPT.encode())
    request.parameters["max_tokens"].int64_param = 5
    request.parameters["ignore_eos"].bool_param = True
    response = await stub.ModelInfer(request)
    assert not response.raw_output_contents
    assert response.outputs[0].contents.bytes_contents[0].decode() == await native_text(address, 5)


async def test_stream_infer_streams_deltas(client: Any, v2: SimpleNamespace, address: str) -> None:
    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {
            "model_name": "generation",
            "inputs": [prompt_input(v2, [PROMPT])],
            "request_id": "s1",
            "parameters": {**GREEDY, "skip_cache": True},
        }

    parts: list[Any] = []
    async for result, error in client.stream_infer(requests()):
        assert error is None, error
        parts.append(result.get_response())
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    assert len(parts) > 1 and all(p.id == "s1" for p in parts)
    assert [p.parameters["triton_final_response"].bool_param for p in parts] == [False] * (len(parts) - 1) + [
        True
    ]
    text = "".join(v2.utils.deserialize_bytes_tensor(p.raw_output_contents[0])[0].decode() for p in parts)
    assert text == await native_text(address, 12)
    assert parts[-1].parameters["finish_reason"].string_param == "length"


async def test_stream_whole_completion_and_empty_final(stub: Any, v2: SimpleNamespace) -> None:
    request = v2.service_pb2.ModelInferRequest(model_name="generation", id="w")
    request.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"Hi")
    request.parameters["stream"].bool_param = False
    request.parameters["triton_enable_empty_final_response"].bool_param = True

    async def one() -> AsyncIterator[Any]:
        yield request

    responses = [r.infer_response async for r in stub.ModelStreamInfer(one())]
    assert len(responses) == 2
    assert responses[0].outputs[0].contents.bytes_contents[0]
    assert [r.parameters["triton_final_response"].bool_param for r in responses] == [False, True]
    assert not responses[1].outputs


async def test_bad_requests_name_the_input_or_parameter(client: Any, v2: SimpleNamespace) -> None:
    cases = [
        ([prompt_input(v2, ["a", "b"])], {}, "inputs[text_input]: takes one prompt per request"),
        ([prompt_input(v2, [""])], {}, "inputs[text_input][0]: must not be empty"),
        ([prompt_input(v2, [PROMPT])], {"max_tokens": 100_000}, "parameters[max_tokens]: is 100000"),
        ([prompt_input(v2, [PROMPT])], {"temperature": -1.0}, "parameters[temperature]: must be"),
        ([prompt_input(v2, [PROMPT])], {"top_p": 2.0}, "parameters[top_p]: must be in (0, 1]"),
        ([prompt_input(v2, [PROMPT])], {"stop": 3}, "parameters[stop]: must be a string"),
    ]
    for inputs, parameters, message in cases:
        with pytest.raises(v2.utils.InferenceServerException) as caught:
            await client.infer("generation", inputs, parameters=parameters)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", message
        assert caught.value.message().startswith(message), caught.value.message()


async def test_stream_errors_are_in_band(client: Any, v2: SimpleNamespace) -> None:
    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {
            "model_name": "generation",
            "inputs": [prompt_input(v2, [PROMPT])],
            "request_id": "bad",
            "parameters": {"max_tokens": 100_000},
        }
        yield {
            "model_name": "generation",
            "inputs": [prompt_input(v2, [PROMPT])],
            "request_id": "good",
            "parameters": {"max_tokens": 3, "stream": False},
        }

    errors, finals = [], []
    async for result, error in client.stream_infer(requests()):
        if error is not None:
            errors.append(error.message())
        elif result.get_response().parameters["triton_final_response"].bool_param:
            finals.append(result.get_response().id)
        if len(errors) + len(finals) == 2:
            break
    assert finals == ["good"]
    assert len(errors) == 1 and errors[0].startswith("INVALID_ARGUMENT: parameters[max_tokens]: is 100000")


async def test_cancelled_stream_frees_its_sequence(stub: Any, v2: SimpleNamespace, client: Any) -> None:
    """A client that leaves mid-generation aborts its sequence (counted as cancelled)."""
    name = (await client.get_model_metadata("generation")).name
    labels = {"service": "generation", "model": name, "reason": "cancelled"}
    before = REGISTRY.get_sample_value("textserve_generation_finished_total", labels) or 0.0
    request = v2.service_pb2.ModelInferRequest(model_name="generation")
    request.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"Go")
    request.parameters["max_tokens"].int64_param = 1000
    request.parameters["ignore_eos"].bool_param = True
    release = asyncio.Event()

    async def one() -> AsyncIterator[Any]:
        yield request
        await release.wait()  # keep the request stream open

    call = stub.ModelStreamInfer(one())
    first = await call.read()
    assert first.error_message == "" and first.infer_response.outputs
    call.cancel()
    release.set()
    for _ in range(300):  # bounded wait for the engine's next step; no timing is asserted
        if (REGISTRY.get_sample_value("textserve_generation_finished_total", labels) or 0.0) > before:
            break
        await asyncio.sleep(0.1)
    assert (REGISTRY.get_sample_value("textserve_generation_finished_total", labels) or 0.0) == before + 1
