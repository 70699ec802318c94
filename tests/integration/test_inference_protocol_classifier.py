"""Open Inference Protocol on the classifier service, called by an existing v2 client unchanged.

A zero-shot classifier (the default sentiment label set, in-process model) serves real
gRPC on loopback; requests come from tritonclient and its generated stubs of the official
proto, and answers are checked against the native Classify API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from textserve.classifier.config import ClassifierServiceConfig
from textserve.core.cache import build_cache
from textserve.core.config import CacheConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import classifier_pb2, classifier_pb2_grpc

from tests.oip_client import official
from tests.support import loopback_server, model_config, start_host

MODEL = "all-MiniLM-L6-v2"
SENTIMENT = [
    ("I absolutely love this, it is fantastic and wonderful!", "positive"),
    ("This is terrible, I hate it and I am very angry.", "negative"),
    ("The train leaves from platform four at nine.", "neutral"),
]
TEXTS = [text for text, _ in SENTIMENT]


@pytest.fixture(scope="module")
def v2() -> SimpleNamespace:
    return official()


@pytest.fixture(scope="module")
async def address(onnx_cache_dir: Any) -> AsyncIterator[str]:
    from textserve.classifier.app import ClassifierApp

    config = ClassifierServiceConfig(server=loopback_server(), model=model_config())
    host: ServiceHost = await start_host([ClassifierApp(config, build_cache(CacheConfig(), "classifier"))])
    yield f"127.0.0.1:{host.port_of('classifier')}"
    await host.stop(grace=1.0)


@pytest.fixture
async def client(v2: SimpleNamespace, address: str) -> AsyncIterator[Any]:
    async with v2.aio.InferenceServerClient(url=address) as triton:
        yield triton


@pytest.fixture
async def stub(v2: SimpleNamespace, address: str) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield v2.service_pb2_grpc.GRPCInferenceServiceStub(channel)


def bytes_input(v2: SimpleNamespace, name: str, items: list[str]) -> Any:
    tensor = v2.grpc.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array([i.encode() for i in items], dtype=np.object_))
    return tensor


async def native(address: str, **fields: Any) -> classifier_pb2.ClassifyResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        return await stub.Classify(classifier_pb2.ClassifyRequest(**fields))


async def test_model_metadata(client: Any) -> None:
    assert await client.is_server_ready()
    assert await client.is_model_ready("classifier") and await client.is_model_ready(MODEL)
    metadata = await client.get_model_metadata("classifier")
    assert metadata.name == MODEL
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("text_input", "BYTES", [-1]),
        ("labels", "BYTES", [-1]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("scores", "FP32", [-1, -1]),
        ("labels", "BYTES", [-1, -1]),
        ("top_label", "BYTES", [-1]),
    ]


async def test_infer_matches_native_classify(client: Any, v2: SimpleNamespace, address: str) -> None:
    result = await client.infer(MODEL, [bytes_input(v2, "text_input", TEXTS)])
    top = [label.decode() for label in result.as_numpy("top_label")]
    assert top == [label for _, label in SENTIMENT]
    scores, labels = result.as_numpy("scores"), result.as_numpy("labels")
    assert scores.shape == labels.shape == (3, 3) and scores.dtype == np.float32
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    reference = await native(address, texts=TEXTS)
    for row, item in enumerate(reference.classifications):
        assert [label.decode() for label in labels[row]] == [s.label for s in item.scores]
        np.testing.assert_allclose(scores[row], [s.score for s in item.scores], rtol=1e-5)
    assert result.get_response().parameters["input_tokens"].int64_param > 0


async def test_request_labels_top_k_and_typed_outputs(stub: Any, v2: SimpleNamespace) -> None:
    """Labels as a second input; one requested output in typed contents."""
    topics = ["sports", "cooking", "technology"]
    request = v2.service_pb2.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="text_input", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"The striker scored a goal in the final match.", b"Stir the soup and add salt."]
    )
    request.inputs.add(name="labels", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(
        t.encode() for t in topics
    )
    request.outputs.add(name="labels")
    request.parameters["top_k"].int64_param = 2
    response = await stub.ModelInfer(request)
    (output,) = response.outputs
    assert (output.name, list(output.shape)) == ("labels", [2, 2])
    ranked = [b.decode() for b in output.contents.bytes_contents]
    assert ranked[0] == "sports" and ranked[2] == "cooking"


async def test_cache_is_shared_with_native_api(client: Any, v2: SimpleNamespace, address: str) -> None:
    text = "A sentence only the classifier cache test sends, and I like it."
    first = await client.infer(MODEL, [bytes_input(v2, "text_input", [text])])
    assert first.get_response().parameters["cached_texts"].int64_param == 0
    assert (await native(address, texts=[text])).usage.cached_texts == 1


async def test_bad_requests_name_the_input_or_parameter(client: Any, v2: SimpleNamespace) -> None:
    texts = bytes_input(v2, "text_input", TEXTS[:1])
    cases = [
        ([texts], {"label_set": "topics"}, "parameters[label_set]: unknown label set 'topics'"),
        ([texts], {"temperature": 1000.0}, "parameters[temperature]: must be in (0, 100]"),
        ([texts], {"top_k": -1}, "parameters[top_k]: must be 0"),
        ([texts, bytes_input(v2, "labels", ["only"])], {}, "inputs[labels]: has 1 label"),
        ([texts, bytes_input(v2, "labels", ["a", " "])], {}, "inputs[labels][1].name: must not be empty"),
        ([bytes_input(v2, "text_input", ["ok", ""])], {}, "inputs[text_input][1]: must not be empty"),
    ]
    for inputs, parameters, message in cases:
        with pytest.raises(v2.utils.InferenceServerException) as caught:
            await client.infer("classifier", inputs, parameters=parameters)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", message
        assert caught.value.message().startswith(message), caught.value.message()
    wrong = v2.grpc.InferInput("labels", [2], "INT32")
    wrong.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    with pytest.raises(v2.utils.InferenceServerException) as caught:
        await client.infer("classifier", [texts, wrong])
    assert caught.value.message() == "inputs[labels].datatype: is 'INT32'; expected BYTES"
