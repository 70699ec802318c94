"""EmbedRequest.token_inputs (pre-tokenized input, used by the OpenAI gateway) on the real service."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from textserve.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc, tokenizer_pb2

TEXTS = ["hello world", "Token ids are used exactly as given."]


@pytest.fixture(scope="module")
def token_ids() -> list[list[int]]:
    from textserve.core.config import default_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    return [list(tokenizer(text)["input_ids"]) for text in TEXTS]


async def embed(address: str, request: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response: embedding_pb2.EmbedResponse = await stub.Embed(request, timeout=30)
    return response


async def test_token_inputs_equal_texts(embedding_address: str, token_ids: list[list[int]]) -> None:
    by_text = await embed(embedding_address, embedding_pb2.EmbedRequest(texts=TEXTS, skip_cache=True))
    by_ids = await embed(
        embedding_address,
        embedding_pb2.EmbedRequest(
            token_inputs=[tokenizer_pb2.TokenIds(ids=ids) for ids in token_ids], skip_cache=True
        ),
    )
    for a, b, ids in zip(by_text.embeddings, by_ids.embeddings, token_ids, strict=True):
        np.testing.assert_allclose(np.asarray(a.values), np.asarray(b.values), atol=1e-5)
        assert b.input_tokens == len(ids)
    assert by_ids.usage.input_tokens == sum(len(ids) for ids in token_ids)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            embedding_pb2.EmbedRequest(texts=["x"], token_inputs=[tokenizer_pb2.TokenIds(ids=[101, 102])]),
            "token_inputs",
        ),
        (
            embedding_pb2.EmbedRequest(token_inputs=[tokenizer_pb2.TokenIds(ids=[101, 40_000, 102])]),
            "token_inputs[0].ids[1]",
        ),
        (embedding_pb2.EmbedRequest(token_inputs=[tokenizer_pb2.TokenIds(ids=[])]), "token_inputs[0]"),
        (
            embedding_pb2.EmbedRequest(
                token_inputs=[tokenizer_pb2.TokenIds(ids=[101] + [2000] * 300 + [102])],
                truncation=common_pb2.TRUNCATION_POLICY_REJECT,
            ),
            "token_inputs[0]",
        ),
    ],
)
async def test_bad_token_inputs_are_invalid_argument(
    embedding_address: str, request_: embedding_pb2.EmbedRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embed(embedding_address, request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field + ":"), caught.value.details()


async def test_overlong_token_inputs_are_truncated_by_default(embedding_address: str) -> None:
    ids = [101] + [2000] * 300 + [102]
    response = await embed(
        embedding_address, embedding_pb2.EmbedRequest(token_inputs=[tokenizer_pb2.TokenIds(ids=ids)])
    )
    assert response.embeddings[0].truncated
    assert response.embeddings[0].input_tokens == 256
