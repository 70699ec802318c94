"""Shadow traffic (lifecycle/): a shadow version at 100 % never changes a primary response, and
its agreement metric is what the test computes from the two versions' own answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from textserve.classifier.app import ClassifierApp
from textserve.classifier.config import ClassifierServiceConfig
from textserve.core.metrics import REGISTRY
from textserve.embedding.app import EmbeddingApp
from textserve.transport.server import ServiceHost
from textserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

from tests.lifecycle_support import MODEL, make_version, repository
from tests.support import embedding_config, loopback_server, model_config, start_host, wait_until

TEXTS = [
    "The service was quick and friendly.",
    "I will never buy this again.",
    "The train leaves at nine.",
    "What a wonderful surprise!",
    "The screen cracked after a week.",
    "Meetings are held on Tuesdays.",
    "Absolutely loved the food here.",
    "This is the worst update so far.",
]


@pytest.fixture(scope="module")
async def host(tmp_path_factory: pytest.TempPathFactory, onnx_cache_dir: Path) -> AsyncIterator[ServiceHost]:
    root = tmp_path_factory.mktemp("shadow-repository")
    make_version(root, "1", "mean")
    make_version(root, "2", "cls")
    routing = repository(root, weights={"1": 100})
    apps = [
        EmbeddingApp(embedding_config(repository=routing)),
        ClassifierApp(
            ClassifierServiceConfig(server=loopback_server(), model=model_config(), repository=routing)
        ),
    ]
    started = await start_host(apps)
    yield started
    await started.stop(grace=1.0)


def sample(name: str, service: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": service, "model": MODEL, "version": "2"}) or 0.0


def compared(service: str) -> float:
    labels = {"service": service, "model": MODEL, "version": "2", "outcome": "compared"}
    return REGISTRY.get_sample_value("textserve_shadow_requests_total", labels) or 0.0


async def set_shadow(channel: grpc.aio.Channel, share: float) -> None:
    control = models_pb2_grpc.ModelControlStub(channel)
    request = models_pb2.SetRoutingRequest(weights={"1": 100}, shadow_version="2", shadow_share=share)
    await control.SetRouting(request, timeout=10)


async def test_embedding_shadow_leaves_primary_unchanged_and_records_cosine(host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('embedding')}") as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

        async def primary(text: str) -> embedding_pb2.EmbedResponse:
            return await stub.Embed(embedding_pb2.EmbedRequest(texts=[text], skip_cache=True), timeout=30)

        await set_shadow(channel, 0.0)
        without = [await primary(text) for text in TEXTS]
        await set_shadow(channel, 1.0)
        before = (sample("textserve_shadow_agreement_sum", "embedding"), compared("embedding"))
        with_shadow = [await primary(text) for text in TEXTS]
        await wait_until(lambda: compared("embedding") >= before[1] + len(TEXTS))
        await set_shadow(channel, 0.0)
        pinned = [
            await stub.Embed(
                embedding_pb2.EmbedRequest(texts=[t], model_version="2", skip_cache=True), timeout=30
            )
            for t in TEXTS
        ]
    for a, b in zip(without, with_shadow, strict=True):
        assert a.model.version == b.model.version == "1"
        assert a.embeddings[0].SerializeToString() == b.embeddings[0].SerializeToString()
        assert a.model.SerializeToString() == b.model.SerializeToString()
    expected = 0.0
    for primary_response, shadow_response in zip(with_shadow, pinned, strict=True):
        p = np.asarray(primary_response.embeddings[0].values, np.float64)
        s = np.asarray(shadow_response.embeddings[0].values, np.float64)
        expected += float(p @ s / (np.linalg.norm(p) * np.linalg.norm(s)))
    recorded = sample("textserve_shadow_agreement_sum", "embedding") - before[0]
    assert compared("embedding") - before[1] == len(TEXTS)
    assert recorded == pytest.approx(expected, abs=1e-4)
    assert expected < len(TEXTS) - 0.01  # CLS pooling really is another model


async def test_classifier_shadow_records_top_label_agreement(host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('classifier')}") as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        await set_shadow(channel, 0.0)
        without = [
            await stub.Classify(classifier_pb2.ClassifyRequest(texts=[t], skip_cache=True), timeout=30)
            for t in TEXTS
        ]
        await set_shadow(channel, 1.0)
        before = (sample("textserve_shadow_agreement_sum", "classifier"), compared("classifier"))
        with_shadow = [
            await stub.Classify(classifier_pb2.ClassifyRequest(texts=[t], skip_cache=True), timeout=30)
            for t in TEXTS
        ]
        await wait_until(lambda: compared("classifier") >= before[1] + len(TEXTS))
        await set_shadow(channel, 0.0)
        pinned = [
            await stub.Classify(
                classifier_pb2.ClassifyRequest(texts=[t], model_version="2", skip_cache=True), timeout=30
            )
            for t in TEXTS
        ]
    for a, b in zip(without, with_shadow, strict=True):
        assert a.classifications[0].SerializeToString() == b.classifications[0].SerializeToString()
        assert a.model.version == b.model.version == "1"
    expected = sum(
        p.classifications[0].top_label == s.classifications[0].top_label
        for p, s in zip(with_shadow, pinned, strict=True)
    )
    assert sample("textserve_shadow_agreement_sum", "classifier") - before[0] == pytest.approx(expected)
    assert compared("classifier") - before[1] == len(TEXTS)
