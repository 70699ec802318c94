"""Both backends match sentence-transformers; a server is NOT_SERVING/UNAVAILABLE until loaded."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from textserve.embedding.app import EmbeddingApp
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.support import embedding_config, model_config, wait_until

TEXTS = [
    "A man is eating food.",
    "A man is riding a horse on a sunny beach while children play nearby.",
    "Das ist ein Test.",
    "word " * 300,
    "?",
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer
    from textserve.core.config import default_model_path

    return np.asarray(SentenceTransformer(default_model_path(), device="cpu").encode(TEXTS))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
async def test_backend_matches_sentence_transformers(backend: str, reference: np.ndarray) -> None:
    app = EmbeddingApp(embedding_config(model=model_config(backend=backend)))
    host = ServiceHost([app])
    await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of('embedding')}") as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            response = await stub.Embed(embedding_pb2.EmbedRequest(texts=TEXTS, normalize=True))
    finally:
        await host.stop(grace=1)
    assert response.model.backend == backend
    for item, expected in zip(response.embeddings, reference, strict=True):
        got = np.asarray(item.values)
        assert float(got @ expected / np.linalg.norm(expected)) >= 0.999


class SlowStartApp(EmbeddingApp):
    """The real embedding app whose model load waits for the test's signal."""

    def __init__(self, release: asyncio.Event) -> None:
        super().__init__(embedding_config(model=model_config(backend="torch")))
        self.release = release

    async def start(self) -> None:
        await self.release.wait()
        await super().start()


async def test_unavailable_and_not_serving_until_model_loaded() -> None:
    release = asyncio.Event()
    host = ServiceHost([SlowStartApp(release)])
    await host.start(wait_ready=False)
    address = f"127.0.0.1:{host.port_of('embedding')}"
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="textserve.v1.EmbeddingService"))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Embed(embedding_pb2.EmbedRequest(texts=["early"]))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            release.set()
            await asyncio.wait_for(host.running[0].ready.wait(), 60)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="textserve.v1.EmbeddingService"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert len((await stub.Embed(embedding_pb2.EmbedRequest(texts=["now"]))).embeddings) == 1
    finally:
        await host.stop(grace=1)


async def test_deadline_exceeded_work_is_not_computed(embedding_address: str) -> None:
    """A request whose deadline passes while queued gets DEADLINE_EXCEEDED and is dropped.

    Through gRPC the server cancels the call at its deadline, so the drop is counted as
    cancelled or expired, whichever comes first; the batcher's own expiry, apart from
    cancellation, is test_embedding_queue.py."""
    from textserve.core.metrics import REGISTRY

    def dropped() -> float:
        return sum(
            REGISTRY.get_sample_value(
                "textserve_batcher_dropped_total",
                {"service": "embedding", "model": "all-MiniLM-L6-v2", "reason": reason},
            )
            or 0.0
            for reason in ("expired", "cancelled")
        )

    labels = {"service": "embedding", "model": "all-MiniLM-L6-v2", "version": "1"}

    def queue_depth() -> float:
        return REGISTRY.get_sample_value("textserve_queue_depth", labels) or 0.0

    def computed() -> float:
        return REGISTRY.get_sample_value("textserve_batch_size_sum", labels) or 0.0

    before, computed_before = dropped(), computed()
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        # Fill the queue with distinct long texts (identical ones would be computed once)
        # so the short-deadline requests wait behind them.
        busy = [
            asyncio.ensure_future(
                stub.Embed(
                    embedding_pb2.EmbedRequest(
                        texts=[f"{i} {j} " + "long text " * 120 for j in range(16)], skip_cache=True
                    )
                )
            )
            for i in range(6)
        ]
        # Until the long texts are tokenized and wait in the queue: 96 texts, at most one batch
        # (max_batch_size 32) taken out to run (bounded poll of the server's own gauge).
        await wait_until(lambda: queue_depth() >= 6 * 16 - 32, limit_s=60)
        hurried = [
            stub.Embed(embedding_pb2.EmbedRequest(texts=[f"hurry {i}"], skip_cache=True), timeout=0.05)
            for i in range(8)
        ]
        results = await asyncio.gather(*busy, *hurried, return_exceptions=True)
    assert all(isinstance(r, embedding_pb2.EmbedResponse) for r in results[:6])
    codes = [r.code() for r in results[6:] if isinstance(r, grpc.aio.AioRpcError)]
    assert codes and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    # No timed-out text was computed: the model ran the 96 long texts and nothing else. (A text
    # whose deadline passed before it was queued, e.g. while tokenizing, never reaches the queue;
    # one that was queued left it uncomputed: cancelled by the gRPC deadline, or expired.)
    await wait_until(lambda: computed() - computed_before >= 6 * 16, limit_s=60)
    assert computed() - computed_before == 6 * 16
    assert dropped() - before <= len(codes)
