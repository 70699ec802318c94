"""INVALID_ARGUMENT from a real server carries the BadRequest detail, and the callers read it.

The embedding service answers an empty text with `google.rpc.BadRequest` naming `texts[1]`;
the classifier's remote vector source keeps that field; the embedding service's remote token
source tells "the tokenizer lacks our model" (field `model`) from the detail alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from textserve.classifier.vector_source import RemoteVectorSource
from textserve.core.errors import InvalidInput, NotReady
from textserve.runtime.remote_tokens import RemoteTokenSource
from textserve.transport.status import abort, field_violation
from textserve.v1 import embedding_pb2, embedding_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc


async def test_embed_with_an_empty_text_names_the_field_in_a_bad_request(embedding_address: str) -> None:
    async with grpc.aio.insecure_channel(embedding_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Embed(embedding_pb2.EmbedRequest(texts=["ok", ""]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    field, problem = field_violation(caught.value) or ("", "")
    assert field == "texts[1]"
    assert caught.value.details() == f"texts[1]: {problem}"


async def test_remote_vectors_keep_the_field_of_the_embedding_service(embedding_address: str) -> None:
    source = RemoteVectorSource(embedding_address, service="classifier")
    try:
        with pytest.raises(InvalidInput) as caught:
            await source.embed(["ok", ""], deadline=None, truncate=None, skip_cache=False)
    finally:
        await source.stop()
    assert caught.value.field == "texts[1]"
    assert caught.value.message == f"texts[1]: {caught.value.problem}"


class _NoSuchModel(tokenizer_pb2_grpc.TokenizerServiceServicer):
    """A tokenizer that lacks every model, saying so in words that do not start with `model:`."""

    async def Tokenize(
        self, request: tokenizer_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.TokenizeResponse:
        await abort(context, InvalidInput("model", "is not served here", message="unknown model requested"))


@pytest.fixture
async def tokenizer_address() -> AsyncIterator[str]:
    server = grpc.aio.server()
    tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server(_NoSuchModel(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def test_remote_tokens_read_the_model_field_from_the_detail(tokenizer_address: str) -> None:
    source = RemoteTokenSource(tokenizer_address)
    source.bind("some-model", 128)
    try:
        with pytest.raises(NotReady) as caught:
            await source.encode(["hello"], deadline=None)
    finally:
        await source.close()
    assert "does not serve model 'some-model': unknown model requested" in caught.value.message
