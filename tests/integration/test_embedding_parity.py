"""Exact parity with sentence-transformers: the raw (unnormalised) pooled vectors and the
normalised ones, element by element, for both backends.

A cosine check cannot see a pooling that divides by the wrong token count (the direction
is unchanged, only the length is off), and normalised vectors hide it as well; so this
module compares `normalize=False` vectors with `numpy.testing.assert_allclose`. The texts
are a few hundred real sentences (SST-2 dev, CoNLL-2003 dev, from ../shared/data) of
mixed lengths, sent in multi-text requests so that the server's batches hold rows of
different lengths (padding differs from row to row), plus edge cases: one character,
exactly the model's 256-token limit, one token over it, emoji, CJK, accents.

Tolerances, measured on CPU against sentence-transformers 6.2 (largest absolute difference
over these texts): raw vectors (entries up to ~1.5, norms ~3-9) torch 1.2e-6, onnxruntime
1.3e-6; normalised vectors torch 2.3e-7, onnxruntime 2.3e-7 (other padding, other summation
order, graph optimisations). Asserted: raw atol 1e-5, normalised atol 2e-6, rtol 1e-4, for
both backends (about ten times what is measured; a pooling that divides by the padded
length is off by up to 50 %, a missing normalisation by a factor of 3 to 9).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from textserve.embedding.app import EmbeddingApp
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.shared_data import shared_file
from tests.support import embedding_config, model_config, start_host

MAX_TOKENS = 256
"""all-MiniLM-L6-v2's max_seq_length, and the service's default max_tokens_per_text."""
TOLERANCE = {
    ("torch", False): {"atol": 1e-5, "rtol": 1e-4},
    ("torch", True): {"atol": 2e-6, "rtol": 1e-4},
    ("onnxruntime", False): {"atol": 1e-5, "rtol": 1e-4},
    ("onnxruntime", True): {"atol": 2e-6, "rtol": 1e-4},
}
"""(backend, normalize) -> assert_allclose tolerances (see the module docstring)."""
REQUEST_SIZE = 24

EDGE_CASES = [
    "x",
    "?",
    # [CLS] + 254 words + [SEP]: exactly the limit; one more word is one token over it.
    "word " * (MAX_TOKENS - 2),
    "word " * (MAX_TOKENS - 1),
    "emoji 🚀✨🎉 and more 👩‍👩‍👧 emoji",
    "日本語のテキストです。中文句子。한국어 문장",
    "café, naïve, Zürich, Ærøskøbing",
    "A man is eating food.",
]


def _sentences() -> list[str]:
    sst = shared_file("sentiment/stsa.binary.dev").read_text(encoding="utf-8").splitlines()
    texts = [line.split(" ", 1)[1] for line in sst[:200] if " " in line]
    conll = shared_file("ner/eng.testa").read_text(encoding="utf-8").split("\n\n")
    for block in conll[1:]:
        words = [line.split(" ")[0] for line in block.splitlines() if line and not line.startswith("-DOC")]
        if len(words) > 1:
            texts.append(" ".join(words))
        if len(texts) >= 300:
            break
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real sentences of mixed lengths, then the edge cases, interleaved so batches mix lengths."""
    real = _sentences()
    mixed = []
    for i, text in enumerate(real):
        mixed.append(text)
        if i % 37 == 0:
            mixed.append(EDGE_CASES[(i // 37) % len(EDGE_CASES)])
    return mixed + EDGE_CASES


@pytest.fixture(scope="module")
def reference(texts: list[str]) -> dict[bool, np.ndarray]:
    """sentence-transformers' own vectors, raw and normalised (the ground truth)."""
    from sentence_transformers import SentenceTransformer
    from textserve.core.config import default_model_path

    model = SentenceTransformer(default_model_path(), device="cpu")
    assert model.max_seq_length == MAX_TOKENS
    # The packaged pipeline is Transformer -> Pooling -> Normalize: its "unnormalised" output
    # (normalize_embeddings=False) is still unit length. The raw reference drops Normalize.
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    raw = SentenceTransformer(modules=[model[0], model[1]], device="cpu")
    return {
        False: np.asarray(raw.encode(texts, batch_size=32)),
        True: np.asarray(model.encode(texts, batch_size=32)),
    }


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    """(backend, address) of an embedding service on that backend."""
    backend = request.param
    host: ServiceHost = await start_host(
        [EmbeddingApp(embedding_config(model=model_config(backend=backend)))]
    )
    yield backend, f"127.0.0.1:{host.port_of('embedding')}"
    await host.stop(grace=1.0)


async def _embed(address: str, texts: list[str], normalize: bool) -> list[embedding_pb2.Embedding]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        out: list[embedding_pb2.Embedding] = []
        for start in range(0, len(texts), REQUEST_SIZE):
            chunk = texts[start : start + REQUEST_SIZE]
            request = embedding_pb2.EmbedRequest(texts=chunk, normalize=normalize, skip_cache=True)
            response = await stub.Embed(request, timeout=120)
            assert response.model.backend
            out.extend(response.embeddings)
    return out


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
async def test_vectors_equal_sentence_transformers(
    served: tuple[str, str], texts: list[str], reference: dict[bool, np.ndarray], normalize: bool
) -> None:
    backend, address = served
    embeddings = await _embed(address, texts, normalize)
    got = np.asarray([e.values for e in embeddings], dtype=np.float32)
    expected = reference[normalize]
    assert got.shape == expected.shape
    worst = int(np.argmax(np.abs(got - expected).max(axis=1)))
    np.testing.assert_allclose(
        got,
        expected,
        **TOLERANCE[backend, normalize],
        err_msg=f"{backend}, normalize={normalize}; worst text {worst}: {texts[worst][:80]!r}",
    )
    norms = np.linalg.norm(got, axis=1)
    if normalize:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:  # raw mean-pooled vectors of this model are far from unit length
        assert np.all(np.abs(norms - 1.0) > 0.5), norms.min()


async def test_edge_cases_token_counts(served: tuple[str, str]) -> None:
    """The limit and one over it: 256 tokens kept for both, only the second is truncated."""
    _, address = served
    embeddings = await _embed(address, EDGE_CASES[2:4], normalize=False)
    assert [e.input_tokens for e in embeddings] == [MAX_TOKENS, MAX_TOKENS]
    assert [e.truncated for e in embeddings] == [False, True]
