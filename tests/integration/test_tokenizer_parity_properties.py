"""Tokenizer parity with Hugging Face on generated text (hypothesis), for each tokenizer family.

Three families, each served by one real tokenizer service on loopback and compared with
its own `transformers` fast tokenizer loaded independently from the same folder:
- WordPiece: the MiniLM tokenizer (BERT normalisation, accent stripping, [CLS] ... [SEP]);
- byte-level BPE: the GPT-2-style tokenizer of runtime/random_lm (no specials added);
- SentencePiece-style: a Unigram model with NFKC normalisation and a Metaspace "▁"
  pre-tokenizer (as T5 builds it, "</s>" appended), and a SentencePiece BPE one with "<s>"
  prepended (as Llama builds it), both trained here on a small corpus.

The text is generated: any unicode category, CJK, emoji (with ZWJ sequences and variation
selectors), combining accents, runs of mixed whitespace, control and zero-width characters.
For every example the service's ids, tokens, offsets (Unicode code point indices) and
untruncated counts, its CountTokens counts, and the in-process tokenizer the model services
use (runtime/tokenization.TextTokenizer, which calls the Rust tokenizer directly) equal
Hugging Face's exactly, with and without special tokens and with a cut (`max_tokens`,
compared with HF's own `truncation=True, max_length=`).

The examples are derandomised (fixed: the suite's hypothesis profile in tests/conftest.py) and
few (`EXAMPLES` per family), so the test is deterministic and takes seconds;
HYPOTHESIS_PROFILE=explore draws 500 fresh random examples per family instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from textserve.core.config import ModelConfig, default_model_path
from textserve.runtime.model_files import resolve_model
from textserve.runtime.tokenization import TextTokenizer
from textserve.tokenizer.config import TokenizerServiceConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from transformers import AutoTokenizer

from tests.support import loopback_server, start_host

EXAMPLES = 40
"""Hypothesis examples per family (each one request of 1-4 texts)."""
IN_PROCESS_CUT = 8
"""max_length of the in-process tokenizer checked against HF truncation."""
FAMILIES = ["wordpiece", "byte-level-bpe", "sentencepiece-unigram", "sentencepiece-bpe"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "Kubernetes schedules pods onto nodes; each service runs in its own container.",
    "Unicode text: café, naïve, Zürich, 東京, Привет, emoji 🚀✨.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: (a, b); [c] {d} - e_f / g: h? i!",
    "Tokens are generated one at a time, and every new token attends to all the tokens before it.",
]

_WORDS = st.sampled_from(
    [
        "hello",
        "world",
        "the",
        "token",
        "café",
        "naïve",
        "Zürich",
        "unbelievably",
        "don't",
        "A.I.",
        "1,000",
        "x",
    ]
)
_CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
_KANA_HANGUL = st.characters(min_codepoint=0x3040, max_codepoint=0x30FF) | st.characters(
    min_codepoint=0xAC00, max_codepoint=0xD7A3
)
_EMOJI = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF) | st.sampled_from(
    ["👩\u200d💻", "❤\ufe0f", "👍🏽", "🇫🇷", "1\ufe0f\u20e3"]
)
_COMBINING = st.tuples(
    st.sampled_from(["a", "e", "o", "n", "A", "\u03b9", "\u0438"]),
    st.lists(st.characters(min_codepoint=0x0300, max_codepoint=0x036F), min_size=1, max_size=3),
).map(lambda pair: pair[0] + "".join(pair[1]))
_WHITESPACE = st.lists(
    st.sampled_from([" ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\u2028"]), min_size=1, max_size=4
).map("".join)
_CONTROL = st.sampled_from(["\x00", "\x01", "\x1b", "\x7f", "\x85", "\u200b", "\u200d", "\ufeff", "\u202e"])
_ANY = st.characters(exclude_categories=("Cs",))

TEXT = (
    st.lists(
        st.one_of(_WORDS, _CJK, _KANA_HANGUL, _EMOJI, _COMBINING, _WHITESPACE, _CONTROL, _ANY),
        min_size=1,
        max_size=12,
    )
    .map("".join)
    .filter(lambda text: bool(text.strip()))  # the service refuses empty or whitespace-only texts
)
CASES = st.tuples(
    st.lists(TEXT, min_size=1, max_size=4),
    st.booleans(),  # add_special_tokens
    st.sampled_from([0, 0, 3, 5, 8]),  # max_tokens (0: no cut)
)


def _save(tokenizer: Any, folder: Path) -> Path:
    """A model folder the service accepts: the tokenizer files and a minimal config.json."""
    folder.mkdir(parents=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 1024}))
    return folder


def _sentencepiece(kind: str) -> Any:
    from tokenizers import SentencePieceBPETokenizer, SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    corpus = _CORPUS * 3
    if kind == "unigram":
        unigram = SentencePieceUnigramTokenizer()
        unigram.train_from_iterator(corpus, vocab_size=300, special_tokens=specials, unk_token="<unk>")
        core = unigram._tokenizer
        core.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    else:
        bpe = SentencePieceBPETokenizer()
        bpe.train_from_iterator(corpus, vocab_size=300, special_tokens=specials)
        core = bpe._tokenizer
        core.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from textserve.runtime.random_lm import byte_level_tokenizer

    root = tmp_path_factory.mktemp("tokenizer-families")
    return {
        "wordpiece": Path(default_model_path()),
        "byte-level-bpe": _save(byte_level_tokenizer(), root / "byte-level-bpe"),
        "sentencepiece-unigram": _save(_sentencepiece("unigram"), root / "sentencepiece-unigram"),
        "sentencepiece-bpe": _save(_sentencepiece("bpe"), root / "sentencepiece-bpe"),
    }


@pytest.fixture(scope="module")
async def host(family_dirs: dict[str, Path]) -> AsyncIterator[ServiceHost]:
    from textserve.tokenizer.app import TokenizerApp

    models = [ModelConfig(path=str(family_dirs[name]), name=name) for name in FAMILIES]
    started = await start_host(
        [TokenizerApp(TokenizerServiceConfig(server=loopback_server(), models=models))]
    )
    yield started
    await started.stop(grace=1.0)


@pytest.fixture
def channel(host: ServiceHost) -> Iterator[grpc.Channel]:
    """A synchronous channel, for hypothesis running in a worker thread (the server's loop runs)."""
    opened = grpc.insecure_channel(f"127.0.0.1:{host.port_of('tokenizer')}")
    yield opened
    opened.close()


def _check_service(
    stub: tokenizer_pb2_grpc.TokenizerServiceStub,
    hf: Any,
    family: str,
    texts: list[str],
    special: bool,
    cut: int,
) -> None:
    response = stub.Tokenize(
        tokenizer_pb2.TokenizeRequest(
            texts=texts,
            model=family,
            add_special_tokens=special,
            return_tokens=True,
            return_offsets=True,
            max_tokens=cut,
        ),
        timeout=30,
    )
    whole = hf(texts, add_special_tokens=special, return_offsets_mapping=True)
    expected = (
        hf(texts, add_special_tokens=special, return_offsets_mapping=True, truncation=True, max_length=cut)
        if cut
        else whole
    )
    assert len(response.encodings) == len(texts)
    for index, encoding in enumerate(response.encodings):
        ids = expected["input_ids"][index]
        assert list(encoding.ids) == ids, texts[index]
        assert list(encoding.tokens) == expected.encodings[index].tokens, texts[index]
        offsets = [(o.start, o.end) for o in encoding.offsets]
        assert offsets == [tuple(pair) for pair in expected["offset_mapping"][index]], texts[index]
        assert all(0 <= start <= end <= len(texts[index]) for start, end in offsets)  # code points
        untruncated = len(whole["input_ids"][index])
        assert encoding.untruncated_tokens == untruncated
        assert encoding.truncated == (len(ids) < untruncated)
    assert response.usage.input_tokens == sum(len(ids) for ids in expected["input_ids"])

    counted = stub.CountTokens(
        tokenizer_pb2.CountTokensRequest(texts=texts, model=family, add_special_tokens=special), timeout=30
    )
    assert list(counted.counts) == [len(ids) for ids in whole["input_ids"]]
    assert counted.total == sum(counted.counts)


def _check_in_process(local: TextTokenizer, hf: Any, texts: list[str], special: bool) -> None:
    encoded = local.encode_many(texts, add_special_tokens=special)
    whole = hf(texts, add_special_tokens=special)["input_ids"]
    cut = hf(texts, add_special_tokens=special, truncation=True, max_length=IN_PROCESS_CUT)["input_ids"]
    for index, item in enumerate(encoded):
        assert item.ids == cut[index], texts[index]
        assert item.full_length == len(whole[index])
        assert item.truncated == (len(whole[index]) > IN_PROCESS_CUT)


def _run_properties(channel: grpc.Channel, folder: Path, family: str) -> None:
    stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
    hf = AutoTokenizer.from_pretrained(str(folder))
    local = TextTokenizer(resolve_model(str(folder)), max_length=IN_PROCESS_CUT)

    # Derandomized, no database, no deadline: the suite's profile (tests/conftest.py).
    @settings(
        max_examples=EXAMPLES if settings.default.derandomize else settings.default.max_examples,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(CASES)
    def parity(case: tuple[list[str], bool, int]) -> None:
        texts, special, cut = case
        _check_service(stub, hf, family, texts, special, cut)
        _check_in_process(local, hf, texts, special)

    parity()


@pytest.mark.parametrize("family", FAMILIES)
async def test_generated_text_tokenizes_exactly_as_hugging_face(
    channel: grpc.Channel, family_dirs: dict[str, Path], family: str
) -> None:
    await asyncio.to_thread(_run_properties, channel, family_dirs[family], family)


def test_the_families_are_what_they_claim(family_dirs: dict[str, Path]) -> None:
    """The generated families really are WordPiece, byte-level BPE and Metaspace Unigram / BPE."""
    kinds = {}
    for family, folder in family_dirs.items():
        backend = json.loads(AutoTokenizer.from_pretrained(str(folder)).backend_tokenizer.to_str())
        kinds[family] = (backend["model"]["type"], (backend.get("pre_tokenizer") or {}).get("type"))
    assert kinds["wordpiece"] == ("WordPiece", "BertPreTokenizer")
    assert kinds["byte-level-bpe"] == ("BPE", "ByteLevel")
    assert kinds["sentencepiece-unigram"] == ("Unigram", "Metaspace")
    assert kinds["sentencepiece-bpe"] == ("BPE", "Metaspace")
