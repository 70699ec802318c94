"""The embedding benchmark's floor server (loadtests/floor_server.py) serves the same vectors as
the model it wraps: a reference row in `make bench-embedding` is only a reference if it does the
same work. Real grpc.aio server on loopback, the packaged MiniLM."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from textserve.runtime.encoder import EncoderModel
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from loadtests.floor_server import start_floor
from tests.support import free_port, model_config

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "a", "serving models on CPUs"]


async def test_floor_server_answers_each_caller_with_its_own_vector() -> None:
    model = await asyncio.to_thread(EncoderModel, model_config(), "embedding")
    port = free_port()
    _, stop = await start_floor(model, port, max_batch=2)  # four callers: at least two batches
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]
            replies = await asyncio.gather(
                *(stub.Embed(embedding_pb2.EmbedRequest(texts=[text]), timeout=30) for text in TEXTS)
            )
    finally:
        await stop()
    for text, reply in zip(TEXTS, replies, strict=True):
        (encoded,) = model.tokenizer.encode_many([text])
        (expected,) = model.run_batch([encoded.ids])
        assert reply.embeddings[0].input_tokens == len(encoded.ids)
        np.testing.assert_allclose(np.array(reply.embeddings[0].values), expected, rtol=1e-4, atol=1e-5)
