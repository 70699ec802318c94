"""Open Inference Protocol on the tokenizer service, called by an existing v2 client unchanged.

Two tokenizers are served (the default model, and the same files under another name), so
one server answers for two protocol models; ids are checked against the native Tokenize.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from textserve.core.config import ModelConfig
from textserve.tokenizer.config import TokenizerServiceConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import tokenizer_pb2, tokenizer_pb2_grpc

from tests.oip_client import official
from tests.support import loopback_server, start_host

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "x"]


@pytest.fixture(scope="module")
def v2() -> SimpleNamespace:
    return official()


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    # Two tokenizers load in parallel threads, and transformers' lazy first import of
    # AutoTokenizer is not thread-safe (ImportError in one thread); import it here first.
    from textserve.tokenizer.app import TokenizerApp
    from transformers import AutoTokenizer  # noqa: F401

    config = TokenizerServiceConfig(
        server=loopback_server(), models=[ModelConfig(), ModelConfig(name="second")]
    )
    host: ServiceHost = await start_host([TokenizerApp(config)])
    yield f"127.0.0.1:{host.port_of('tokenizer')}"
    await host.stop(grace=1.0)


@pytest.fixture
async def client(v2: SimpleNamespace, address: str) -> AsyncIterator[Any]:
    async with v2.aio.InferenceServerClient(url=address) as triton:
        yield triton


def text_input(v2: SimpleNamespace, texts: list[str]) -> Any:
    tensor = v2.grpc.InferInput("text_input", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


async def test_every_tokenizer_is_a_model(client: Any, v2: SimpleNamespace) -> None:
    assert await client.is_server_ready()
    default = await client.get_model_metadata("tokenizer")
    assert default.name == MODEL and default.platform == "huggingface-tokenizers"
    assert [(t.name, t.datatype, list(t.shape)) for t in default.outputs] == [
        ("input_ids", "INT64", [-1, -1]),
        ("input_lengths", "INT64", [-1]),
    ]
    assert (await client.get_model_metadata("second")).name == "second"
    assert await client.is_model_ready("second")
    with pytest.raises(v2.utils.InferenceServerException) as caught:
        await client.get_model_metadata("third")
    assert caught.value.message() == (
        "unknown model 'third'; this server serves 'all-MiniLM-L6-v2' (alias 'tokenizer'), 'second'"
    )


async def test_ids_match_native_tokenize(client: Any, v2: SimpleNamespace, address: str) -> None:
    result = await client.infer("tokenizer", [text_input(v2, TEXTS)], parameters={"add_special_tokens": True})
    ids, lengths = result.as_numpy("input_ids"), result.as_numpy("input_lengths")
    assert ids.dtype == np.int64 and ids.shape == (3, int(lengths.max()))
    async with grpc.aio.insecure_channel(address) as channel:
        native = await tokenizer_pb2_grpc.TokenizerServiceStub(channel).Tokenize(
            tokenizer_pb2.TokenizeRequest(texts=TEXTS, add_special_tokens=True)
        )
    for row, encoding in enumerate(native.encodings):
        assert lengths[row] == len(encoding.ids)
        assert list(ids[row, : lengths[row]]) == list(encoding.ids)
        assert set(ids[row, lengths[row] :]) <= {-1}


async def test_typed_int64_outputs_and_max_tokens(client: Any, v2: SimpleNamespace, address: str) -> None:
    request = v2.service_pb2.ModelInferRequest(model_name="second")
    request.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        TEXTS[1].encode()
    )
    request.parameters["max_tokens"].int64_param = 4
    async with grpc.aio.insecure_channel(address) as channel:
        response = await v2.service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    ids, lengths = response.outputs
    assert list(ids.shape) == [1, 4] and len(ids.contents.int64_contents) == 4
    assert list(lengths.contents.int64_contents) == [4]
    assert response.model_name == "second" and response.parameters["truncated_texts"].int64_param == 1


async def test_bad_requests_name_the_input_or_parameter(client: Any, v2: SimpleNamespace) -> None:
    cases = [
        ([text_input(v2, ["ok", " "])], {}, "inputs[text_input][1]: must not be empty"),
        ([text_input(v2, ["ok"])], {"max_tokens": -2}, "parameters[max_tokens]: is -2"),
        (
            [text_input(v2, ["ok"])],
            {"add_special_tokens": 2},
            "parameters[add_special_tokens]: must be a bool",
        ),
    ]
    for inputs, parameters, message in cases:
        with pytest.raises(v2.utils.InferenceServerException) as caught:
            await client.infer("tokenizer", inputs, parameters=parameters)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", message
        assert caught.value.message().startswith(message), caught.value.message()
