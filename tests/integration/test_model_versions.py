"""Model versions of the embedding service end to end (lifecycle/): a Triton-style repository
on disk, ModelControl RPCs, pinning, weighted sticky routing, run-time weight changes.
Real gRPC server on loopback, the MiniLM in two variants (mean- and CLS-pooled)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from textserve.embedding.app import EmbeddingApp
from textserve.lifecycle.routing import choose
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc, models_pb2, models_pb2_grpc

from tests.lifecycle_support import MODEL, list_versions, make_version, repository, states
from tests.support import embedding_config, start_host

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    make_version(root, "1", "mean")
    make_version(root, "2", "cls")
    return root


@pytest.fixture(scope="module")
async def host(repo: Path, onnx_cache_dir: Path) -> AsyncIterator[ServiceHost]:
    config = embedding_config(repository=repository(repo, weights={"1": 90, "2": 10}))
    started = await start_host([EmbeddingApp(config)])
    yield started
    await started.stop(grace=1.0)


@pytest.fixture
async def channel(host: ServiceHost) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('embedding')}") as opened:
        yield opened
        # Each test starts from the configured split.
        await models_pb2_grpc.ModelControlStub(opened).SetRouting(
            models_pb2.SetRoutingRequest(weights={"1": 90, "2": 10}), timeout=10
        )


async def test_both_versions_ready_and_listed(channel: grpc.aio.Channel) -> None:
    listing = await list_versions(channel)
    assert listing.service == "embedding" and listing.model == MODEL
    assert states(listing) == {"1": "READY", "2": "READY"}
    assert dict(listing.weights) == {"1": 90.0, "2": 10.0}


async def test_pinned_version_by_field_and_metadata(channel: grpc.aio.Channel) -> None:
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    one = await stub.Embed(embedding_pb2.EmbedRequest(texts=TEXTS, model_version="1"), timeout=30)
    two = await stub.Embed(embedding_pb2.EmbedRequest(texts=TEXTS, model_version="2"), timeout=30)
    by_metadata = await stub.Embed(
        embedding_pb2.EmbedRequest(texts=TEXTS),
        metadata=(("x-textserve-model-version", "2"),),
        timeout=30,
    )
    assert (one.model.version, two.model.version, by_metadata.model.version) == ("1", "2", "2")
    assert one.model.revision != two.model.revision  # other pooling config: another model
    # CLS pooling of the same weights: really another model's vectors, and the cache kept them apart.
    first = np.asarray(one.embeddings[0].values)
    second = np.asarray(two.embeddings[0].values)
    assert not np.allclose(first, second, atol=1e-3)
    assert np.allclose(np.asarray(by_metadata.embeddings[0].values), second)


async def test_unknown_or_malformed_pin(channel: grpc.aio.Channel) -> None:
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.Embed(embedding_pb2.EmbedRequest(texts=TEXTS, model_version="7"), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await stub.Embed(embedding_pb2.EmbedRequest(texts=TEXTS, model_version="v2"), timeout=30)
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_version" in (malformed.value.details() or "")


async def test_split_is_sticky_per_key_and_follows_runtime_weights(channel: grpc.aio.Channel) -> None:
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    keys = [f"user-{i}" for i in range(200)]
    served = {}
    for key in keys:
        response = await stub.Embed(embedding_pb2.EmbedRequest(texts=["hi"], routing_key=key), timeout=30)
        served[key] = response.model.version
    # The server's choice is the router's (unit-tested over 5,000 keys for the 90/10 share).
    assert served == {key: choose({"1": 90, "2": 10}, ["1", "2"], key) for key in keys}
    assert 0 < sum(v == "2" for v in served.values()) < 60
    for key in keys[:20]:  # the same key again (metadata form): the same version
        again = await stub.Embed(
            embedding_pb2.EmbedRequest(texts=["hi"]), metadata=(("x-textserve-routing-key", key),), timeout=30
        )
        assert again.model.version == served[key]
    control = models_pb2_grpc.ModelControlStub(channel)
    await control.SetRouting(models_pb2.SetRoutingRequest(weights={"1": 0, "2": 100}), timeout=10)
    for key in keys[:50]:
        response = await stub.Embed(embedding_pb2.EmbedRequest(texts=["hi"], routing_key=key), timeout=30)
        assert response.model.version == "2"
