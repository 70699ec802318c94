"""Embedding service end to end: real gRPC server on loopback, real model, real batching."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from textserve.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Kubernetes schedules pods onto nodes according to resource requests.",
    "Ein kurzer deutscher Satz.",
    "emoji 🚀 and accents: café, naïve",
    "x",
]


@pytest.fixture(scope="module")
def reference_vectors() -> np.ndarray:
    """sentence-transformers' own vectors for TEXTS (the ground truth; unit length, as the
    packaged pipeline ends in Normalize: exact raw parity is in test_embedding_parity.py)."""
    from sentence_transformers import SentenceTransformer
    from textserve.core.config import default_model_path

    model = SentenceTransformer(default_model_path(), device="cpu")
    return np.asarray(model.encode(TEXTS, normalize_embeddings=False))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_vectors_match_sentence_transformers(
    embedding_address: str, reference_vectors: np.ndarray
) -> None:
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response = await stub.Embed(embedding_pb2.EmbedRequest(texts=TEXTS), timeout=30)
    assert len(response.embeddings) == len(TEXTS)
    for item, expected in zip(response.embeddings, reference_vectors, strict=True):
        assert cosine(np.asarray(item.values), expected) >= 0.999
    assert response.usage.input_tokens == sum(e.input_tokens for e in response.embeddings)
    assert response.model.backend == "onnxruntime"


async def test_normalize_flag(embedding_address: str) -> None:
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        raw = await stub.Embed(embedding_pb2.EmbedRequest(texts=TEXTS[:2], skip_cache=True))
        unit = await stub.Embed(embedding_pb2.EmbedRequest(texts=TEXTS[:2], normalize=True))
    for a, b in zip(raw.embeddings, unit.embeddings, strict=True):
        raw_vector = np.asarray(a.values)
        assert abs(np.linalg.norm(b.values) - 1.0) < 1e-5
        # Mean-pooled MiniLM vectors have norms of 3 to 9: the flag off really leaves them raw.
        assert np.linalg.norm(raw_vector) > 2.0
        np.testing.assert_allclose(b.values, raw_vector / np.linalg.norm(raw_vector), atol=1e-6)


@pytest.mark.parametrize(
    ("request_", "field", "limit"),
    [
        (embedding_pb2.EmbedRequest(), "texts", "at least one"),
        (embedding_pb2.EmbedRequest(texts=["ok", ""]), "texts[1]", "empty"),
        (embedding_pb2.EmbedRequest(texts=["a"] * 300), "texts", "max_texts_per_request=256"),
        (
            embedding_pb2.EmbedRequest(texts=["word " * 400], truncation=common_pb2.TRUNCATION_POLICY_REJECT),
            "texts[0]",
            "max_tokens_per_text=256",
        ),
        (embedding_pb2.EmbedRequest(texts=["y" * 100_001]), "texts[0]", "max_text_chars=100000"),
    ],
)
async def test_bad_input_is_invalid_argument(
    embedding_address: str, request_: embedding_pb2.EmbedRequest, field: str, limit: str
) -> None:
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Embed(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field + ":")
    assert limit in caught.value.details()


async def test_wrong_wire_type_is_invalid_argument(embedding_address: str) -> None:
    """A client sending an int where `texts` (a string) belongs gets INVALID_ARGUMENT naming it."""
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        raw = channel.unary_unary(
            "/textserve.v1.EmbeddingService/Embed",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(bytes([0x08, 0x05]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "texts" in caught.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(bytes([0x0A, 0x02, 0xFF, 0xFE]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_overlong_text_is_truncated_by_default(embedding_address: str) -> None:
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response = await stub.Embed(embedding_pb2.EmbedRequest(texts=["word " * 400, "short"]))
    assert response.embeddings[0].truncated
    assert response.embeddings[0].input_tokens == 256
    assert not response.embeddings[1].truncated
    assert response.usage.truncated_texts == 1


async def test_bad_requests_do_not_disturb_requests_in_flight(
    embedding_address: str, reference_vectors: np.ndarray
) -> None:
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        good = [
            stub.Embed(embedding_pb2.EmbedRequest(texts=[TEXTS[i % len(TEXTS)]], skip_cache=True), timeout=30)
            for i in range(48)
        ]
        bad = [stub.Embed(embedding_pb2.EmbedRequest(texts=["", "x"]), timeout=30) for _ in range(16)]
        results = await asyncio.gather(*good, *bad, return_exceptions=True)
    for i, result in enumerate(results[:48]):
        assert isinstance(result, embedding_pb2.EmbedResponse), result
        assert cosine(np.asarray(result.embeddings[0].values), reference_vectors[i % len(TEXTS)]) >= 0.999
    for result in results[48:]:
        assert isinstance(result, grpc.aio.AioRpcError)
        assert result.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_requests_are_batched(embedding_address: str) -> None:
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        calls = [
            stub.Embed(embedding_pb2.EmbedRequest(texts=[f"sentence number {i}"], skip_cache=True))
            for i in range(64)
        ]
        responses = await asyncio.gather(*calls)
    assert len(responses) == 64
    from textserve.core.metrics import REGISTRY

    count = REGISTRY.get_sample_value(
        "textserve_batch_size_count", {"service": "embedding", "model": "all-MiniLM-L6-v2", "version": "1"}
    )
    total = REGISTRY.get_sample_value(
        "textserve_batch_size_sum", {"service": "embedding", "model": "all-MiniLM-L6-v2", "version": "1"}
    )
    assert count is not None and total is not None and total / count > 1.0


async def test_info_describes_model_and_limits(embedding_address: str) -> None:
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        info = await stub.Info(embedding_pb2.InfoRequest())
    assert info.model.name == "all-MiniLM-L6-v2"
    assert info.dimensions == 384
    assert info.pooling == "mean"
    assert info.limits.max_tokens_per_text == 256
    assert info.limits.max_texts_per_request == 256
    assert info.batch_budget.max_batch_size >= 1


async def test_embed_stream_keeps_order(embedding_address: str) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        for i in range(40):
            yield embedding_pb2.EmbedStreamRequest(
                request_id=f"r{i}", request=embedding_pb2.EmbedRequest(texts=[f"text {i}", "other"])
            )

    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        ids = [item.request_id async for item in stub.EmbedStream(requests())]
    assert ids == [f"r{i}" for i in range(40)]


async def test_embed_stream_bad_message_names_position(embedding_address: str) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        yield embedding_pb2.EmbedStreamRequest(
            request_id="ok", request=embedding_pb2.EmbedRequest(texts=["fine"])
        )
        yield embedding_pb2.EmbedStreamRequest(request_id="bad", request=embedding_pb2.EmbedRequest())

    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        call = stub.EmbedStream(requests())
        first = await call.read()
        assert first.request_id == "ok"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream[1]" in caught.value.details() and "bad" in caught.value.details()


async def test_health_and_reflection(embedding_address: str) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(embedding_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "textserve.v1.EmbeddingService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():  # type: ignore[no-untyped-def]
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = []
        async for reply in stub.ServerReflectionInfo(ask()):
            names = [s.name for s in reply.list_services_response.service]
    assert "textserve.v1.EmbeddingService" in names
    assert "grpc.health.v1.Health" in names
