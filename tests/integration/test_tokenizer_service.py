"""Tokenizer service end to end: real gRPC server on loopback, the real MiniLM tokenizer.

Ids, tokens and offsets are checked against the Hugging Face tokenizer itself; an
embedding service that tokenizes through this service gives the same vectors as one
that tokenizes in-process.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from textserve.core.config import ModelConfig, default_model_path
from textserve.tokenizer.config import TokenizerServiceConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from transformers import AutoTokenizer

from tests.support import embedding_config, free_port, loopback_server, model_config, start_host

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "emoji 🚀 and accents: café, naïve — ünïcödé",
    "  leading and trailing spaces  ",
    "Kubernetes schedules pods onto nodes according to resource requests.",
    "中文字符 mixed with English",
]
LONG = "word " * 400
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def hf() -> Any:
    """The Hugging Face tokenizer of the default model (the ground truth)."""
    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the default model's tokenizer files with a chat template set."""
    target = tmp_path_factory.mktemp("models") / "chat-minilm"
    source = Path(default_model_path())
    target.mkdir()
    for name in ("config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, target / name)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
async def tokenizer_host(chat_model_dir: Path) -> AsyncIterator[ServiceHost]:
    """A tokenizer service with two models: the default one, then a copy with a chat template."""
    from textserve.tokenizer.app import TokenizerApp

    config = TokenizerServiceConfig(
        server=loopback_server(), models=[ModelConfig(), ModelConfig(path=str(chat_model_dir))]
    )
    host = await start_host([TokenizerApp(config)])
    yield host
    await host.stop(grace=1.0)


@pytest.fixture(scope="module")
def tokenizer_address(tokenizer_host: ServiceHost) -> str:
    return f"127.0.0.1:{tokenizer_host.port_of('tokenizer')}"


@pytest.fixture
async def stub(tokenizer_address: str) -> AsyncIterator[tokenizer_pb2_grpc.TokenizerServiceStub]:
    async with grpc.aio.insecure_channel(tokenizer_address) as channel:
        yield tokenizer_pb2_grpc.TokenizerServiceStub(channel)


@pytest.mark.parametrize("special", [True, False])
async def test_ids_tokens_and_offsets_equal_hugging_face(
    stub: tokenizer_pb2_grpc.TokenizerServiceStub, hf: Any, special: bool
) -> None:
    response = await stub.Tokenize(
        tokenizer_pb2.TokenizeRequest(
            texts=TEXTS, add_special_tokens=special, return_tokens=True, return_offsets=True
        ),
        timeout=30,
    )
    expected = hf(TEXTS, add_special_tokens=special, return_offsets_mapping=True)
    assert len(response.encodings) == len(TEXTS)
    for index, encoding in enumerate(response.encodings):
        assert list(encoding.ids) == expected["input_ids"][index]
        assert list(encoding.tokens) == hf.convert_ids_to_tokens(expected["input_ids"][index])
        offsets = [(o.start, o.end) for o in encoding.offsets]
        assert offsets == [tuple(pair) for pair in expected["offset_mapping"][index]]
        assert not encoding.truncated
        assert encoding.untruncated_tokens == len(encoding.ids)
    # Offsets are code point indices into the Python string.
    text = TEXTS[2]
    encoding = response.encodings[2]
    spans = [text[o.start : o.end] for o in encoding.offsets if o.end > o.start]
    assert "🚀" in spans and any("caf" in span for span in spans)
    assert response.usage.input_tokens == sum(len(e.ids) for e in response.encodings)
    assert response.model.name == "all-MiniLM-L6-v2"


async def test_max_tokens_cuts_like_hugging_face_truncation(
    stub: tokenizer_pb2_grpc.TokenizerServiceStub, hf: Any
) -> None:
    response = await stub.Tokenize(
        tokenizer_pb2.TokenizeRequest(
            texts=[LONG, "short"], add_special_tokens=True, return_offsets=True, max_tokens=16
        )
    )
    expected = hf([LONG, "short"], truncation=True, max_length=16, return_offsets_mapping=True)
    long, short = response.encodings
    assert list(long.ids) == expected["input_ids"][0]
    assert [(o.start, o.end) for o in long.offsets] == [tuple(p) for p in expected["offset_mapping"][0]]
    assert long.truncated and long.untruncated_tokens == len(hf(LONG)["input_ids"]) > 16
    assert not short.truncated and list(short.ids) == expected["input_ids"][1]
    assert response.usage.truncated_texts == 1


async def test_count_and_detokenize(stub: tokenizer_pb2_grpc.TokenizerServiceStub, hf: Any) -> None:
    counted = await stub.CountTokens(tokenizer_pb2.CountTokensRequest(texts=TEXTS, add_special_tokens=True))
    expected = [len(ids) for ids in hf(TEXTS)["input_ids"]]
    assert list(counted.counts) == expected
    assert counted.total == sum(expected)
    ids = hf(TEXTS)["input_ids"]
    for skip in (False, True):
        decoded = await stub.Detokenize(
            tokenizer_pb2.DetokenizeRequest(
                sequences=[tokenizer_pb2.TokenIds(ids=seq) for seq in ids], skip_special_tokens=skip
            )
        )
        assert list(decoded.texts) == hf.batch_decode(ids, skip_special_tokens=skip)


async def test_chat_template_and_list_models(
    stub: tokenizer_pb2_grpc.TokenizerServiceStub, chat_model_dir: Path
) -> None:
    listed = await stub.ListModels(tokenizer_pb2.ListModelsRequest())
    assert [m.name for m in listed.models] == ["all-MiniLM-L6-v2", "chat-minilm"]
    assert listed.models[0].max_input_tokens == 256
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]
    response = await stub.ApplyChatTemplate(
        tokenizer_pb2.ApplyChatTemplateRequest(
            model="chat-minilm",
            messages=[tokenizer_pb2.ChatMessage(**m) for m in messages],
            add_generation_prompt=True,
        )
    )
    reference = AutoTokenizer.from_pretrained(str(chat_model_dir))
    prompt = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert response.prompt == prompt
    assert list(response.ids) == reference(prompt, add_special_tokens=False)["input_ids"]
    assert response.model.name == "chat-minilm"


@pytest.mark.parametrize(
    ("method", "request_", "field", "words"),
    [
        ("Tokenize", tokenizer_pb2.TokenizeRequest(), "texts", "at least one"),
        ("Tokenize", tokenizer_pb2.TokenizeRequest(texts=["ok", " "]), "texts[1]", "empty"),
        ("Tokenize", tokenizer_pb2.TokenizeRequest(texts=["a"] * 300), "texts", "max_texts_per_request=256"),
        (
            "Tokenize",
            tokenizer_pb2.TokenizeRequest(texts=["y" * 100_001]),
            "texts[0]",
            "max_text_chars=100000",
        ),
        ("Tokenize", tokenizer_pb2.TokenizeRequest(texts=["a"], model="nope"), "model", "unknown model"),
        (
            "Tokenize",
            tokenizer_pb2.TokenizeRequest(texts=["a"], add_special_tokens=True, max_tokens=1),
            "max_tokens",
            "at least 2",
        ),
        ("CountTokens", tokenizer_pb2.CountTokensRequest(), "texts", "at least one"),
        ("Detokenize", tokenizer_pb2.DetokenizeRequest(), "sequences", "at least one"),
        (
            "Detokenize",
            tokenizer_pb2.DetokenizeRequest(sequences=[tokenizer_pb2.TokenIds(ids=[101, 999_999])]),
            "sequences[0].ids[1]",
            "vocab_size=30522",
        ),
        (
            "ApplyChatTemplate",
            tokenizer_pb2.ApplyChatTemplateRequest(
                messages=[tokenizer_pb2.ChatMessage(role="user", content="x")]
            ),
            "model",
            "no chat template",
        ),
        (
            "ApplyChatTemplate",
            tokenizer_pb2.ApplyChatTemplateRequest(
                model="chat-minilm", messages=[tokenizer_pb2.ChatMessage(role="", content="x")]
            ),
            "messages[0].role",
            "empty",
        ),
        (
            "ApplyChatTemplate",
            tokenizer_pb2.ApplyChatTemplateRequest(model="chat-minilm"),
            "messages",
            "at least",
        ),
    ],
)
async def test_bad_input_is_invalid_argument(
    stub: tokenizer_pb2_grpc.TokenizerServiceStub, method: str, request_: Any, field: str, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field + ":"), caught.value.details()
    assert words in caught.value.details()


async def test_tokenize_command(tokenizer_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    from textserve.cli import build_parser

    args = build_parser().parse_args(["tokenize", "hello world", "--address", tokenizer_address])
    assert await args.handler(args) == 0
    out = capsys.readouterr().out
    assert "[CLS]" in out and "hello" in out and "[   0,    5)" in out


async def test_embedding_through_tokenizer_service_gives_identical_vectors(
    tokenizer_address: str, embedding_address: str
) -> None:
    """tokenizer_address set: the embedding service tokenizes over gRPC; vectors are unchanged."""
    from textserve.embedding.app import EmbeddingApp
    from textserve.runtime.remote_tokens import RemoteTokenSource

    remote = EmbeddingApp(
        embedding_config(model=model_config(), tokenizer_address=tokenizer_address),
        token_source=RemoteTokenSource(tokenizer_address),
    )
    host = await start_host([remote])
    try:
        texts = [*TEXTS, LONG]
        request = embedding_pb2.EmbedRequest(texts=texts, skip_cache=True)
        reject = embedding_pb2.EmbedRequest(
            texts=["ok", LONG], truncation=common_pb2.TRUNCATION_POLICY_REJECT
        )
        answers = []
        errors = []
        for address in (embedding_address, f"127.0.0.1:{host.port_of('embedding')}"):
            async with grpc.aio.insecure_channel(address) as channel:
                stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
                answers.append(await stub.Embed(request, timeout=60))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Embed(reject, timeout=60)
                errors.append((caught.value.code(), caught.value.details()))
        local, through_tokenizer = answers
        for a, b in zip(local.embeddings, through_tokenizer.embeddings, strict=True):
            assert (a.input_tokens, a.truncated) == (b.input_tokens, b.truncated)
            np.testing.assert_array_equal(np.asarray(a.values), np.asarray(b.values))
        assert through_tokenizer.embeddings[-1].truncated
        assert errors[0] == errors[1]
        assert errors[0][0] == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await host.stop(grace=1.0)


async def test_unreachable_tokenizer_is_unavailable_at_once() -> None:
    """The embedding service's token source fails with UNAVAILABLE, not after its deadline."""
    from textserve.core.errors import NotReady
    from textserve.runtime.remote_tokens import RemoteTokenSource
    from textserve.transport.status import status_of

    source = RemoteTokenSource(f"127.0.0.1:{free_port()}")
    source.bind("all-MiniLM-L6-v2", 256)
    try:
        with pytest.raises(NotReady) as caught:
            await source.encode(["hello"], deadline=None)
        assert status_of(caught.value) == grpc.StatusCode.UNAVAILABLE
        assert "tokenizer service at" in caught.value.message
    finally:
        await source.close()
