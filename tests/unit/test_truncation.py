"""The one truncation rule (runtime/tokenization.py), against Hugging Face truncation.

A cut keeps the first tokens and the special token the tokenizer appends (WordPiece's
[SEP]); an [UNK] or a special token typed in the text is cut like any other token, and a
tokenizer that appends nothing (GPT-2's byte-level BPE) is cut plainly, all exactly as
`tokenizer(..., truncation=True, max_length=n)` cuts. Also where the limit comes from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textserve.core.config import default_model_path
from textserve.runtime.model_files import ModelFiles, resolve_model
from textserve.runtime.tokenization import TextTokenizer, appended_end_id, kept_positions, model_max_length

# Texts that end in [UNK] (a character MiniLM's vocabulary lacks), in a typed "[SEP]", in
# ordinary words; and one far over any small limit.
TEXTS = [
    "hello world ☃🪀",
    "hello world [SEP]",
    "one two three four five six seven [SEP]",
    "the quick brown fox",
    "word " * 40,
    "a",
]


@pytest.fixture(scope="module")
def wordpiece() -> TextTokenizer:
    return TextTokenizer(resolve_model(default_model_path()), max_length=6)


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    from textserve.runtime.random_lm import byte_level_tokenizer

    folder = tmp_path_factory.mktemp("byte-level")
    byte_level_tokenizer().save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64}))
    return TextTokenizer(resolve_model(str(folder)), max_length=6)


def test_kept_positions() -> None:
    assert kept_positions(5, 0, True) == [0, 1, 2, 3, 4]  # 0: no cut
    assert kept_positions(5, 5, True) == [0, 1, 2, 3, 4]
    assert kept_positions(5, 6, True) == [0, 1, 2, 3, 4]
    assert kept_positions(5, 3, False) == [0, 1, 2]
    assert kept_positions(5, 3, True) == [0, 1, 4]
    assert kept_positions(5, 1, True) == [4]


@pytest.mark.parametrize("special", [True, False])
@pytest.mark.parametrize("family", ["wordpiece", "byte_level"])
def test_encode_many_cuts_exactly_as_hugging_face(family: str, special: bool, request: Any) -> None:
    tokenizer: TextTokenizer = request.getfixturevalue(family)
    encoded = tokenizer.encode_many(TEXTS, add_special_tokens=special)
    whole = tokenizer.hf(TEXTS, add_special_tokens=special)["input_ids"]
    cut = tokenizer.hf(TEXTS, add_special_tokens=special, truncation=True, max_length=6)["input_ids"]
    assert [item.ids for item in encoded] == cut
    assert [item.full_length for item in encoded] == [len(ids) for ids in whole]
    assert [item.truncated for item in encoded] == [len(ids) > 6 for ids in whole]
    assert encoded[4].truncated and not encoded[5].truncated


def test_the_slow_path_cuts_like_the_fast_one(wordpiece: TextTokenizer) -> None:
    """Without the Rust tokenizer (`_fast`), the Hugging Face wrapper's ids are cut the same way."""
    fast = wordpiece.encode_many(TEXTS, add_special_tokens=False)
    kept = wordpiece._fast
    try:
        wordpiece._fast = None
        for special in (True, False):
            slow = wordpiece.encode_many(TEXTS, add_special_tokens=special)
            expected = wordpiece.hf(TEXTS, add_special_tokens=special, truncation=True, max_length=6)
            assert [item.ids for item in slow] == expected["input_ids"]
    finally:
        wordpiece._fast = kept
    assert [item.ids for item in fast] == [item.ids for item in wordpiece.encode_many(TEXTS, False)]


def test_only_the_appended_special_token_survives_a_cut(wordpiece: TextTokenizer) -> None:
    sep, unk, cls = (wordpiece.hf.convert_tokens_to_ids(t) for t in ("[SEP]", "[UNK]", "[CLS]"))
    assert wordpiece.end_special_id == sep
    ids = [cls, 10, 11, 12, 13, 14, 15, sep]
    assert wordpiece.truncate(ids).ids == [cls, 10, 11, 12, 13, sep]  # pre-tokenized: with specials
    assert wordpiece.truncate(ids, with_special_tokens=False).ids == ids[:6]
    ending_in_unk = [10, 11, 12, 13, 14, 15, 16, unk]
    assert wordpiece.truncate(ending_in_unk).ids == ending_in_unk[:6]
    assert wordpiece.truncate(ids[:6]).ids == ids[:6] and not wordpiece.truncate(ids[:6]).truncated
    assert not wordpiece.ends_with_special([], True)


def test_a_tokenizer_that_appends_nothing_has_no_end_token(byte_level: TextTokenizer) -> None:
    assert byte_level.end_special_id is None
    assert appended_end_id(byte_level.hf, byte_level.special_ids) is None
    eos = byte_level.hf.eos_token_id
    ids = [10, 11, 12, 13, 14, 15, 16, eos]
    assert byte_level.truncate(ids).ids == ids[:6]


def _files(tmp_path: Path, **jsons: dict[str, Any]) -> ModelFiles:
    for name, content in jsons.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    return ModelFiles(path=tmp_path, name="m", revision="r")


class _Tok:
    def __init__(self, limit: object) -> None:
        self.model_max_length = limit


def test_the_limit_comes_from_sentence_transformers_then_the_model_then_the_tokenizer(tmp_path: Path) -> None:
    assert model_max_length(resolve_model(default_model_path())) == 256  # sentence_bert_config.json
    st = tmp_path / "st"
    st.mkdir()
    assert (
        model_max_length(_files(st, sentence_bert_config={"max_seq_length": 128}, config={"n_positions": 64}))
        == 128
    )
    positions = tmp_path / "positions"
    positions.mkdir()
    files = _files(
        positions, sentence_bert_config={"max_seq_length": "x"}, config={"max_position_embeddings": 300}
    )
    assert model_max_length(files) == 300
    assert model_max_length(files, _Tok(100)) == 100  # the smaller of the two
    assert model_max_length(files, _Tok(1000)) == 300
    assert model_max_length(files, _Tok(10**30)) == 300  # "no limit" sentinel of transformers
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    assert (
        model_max_length(_files(gpt2, config={"n_positions": 64, "max_seq_len": 32})) == 64
    )  # first key wins
    llama = tmp_path / "llama"
    llama.mkdir()
    assert model_max_length(_files(llama, config={"max_seq_len": 32})) == 32
    assert model_max_length(_files(llama, config={"max_seq_len": 32}), _Tok("big")) == 32
    empty = tmp_path / "empty"
    empty.mkdir()
    assert model_max_length(_files(empty)) == 512
    assert model_max_length(_files(empty), _Tok(999_999)) == 999_999
    assert model_max_length(_files(empty), _Tok(1_000_000)) == 512
    assert model_max_length(_files(empty), object()) == 512  # a tokenizer without the attribute


def test_the_default_limit_cuts_like_hugging_face_and_counts_the_whole_text() -> None:
    """MiniLM's tokenizer.json itself truncates at 128 and pads to 128: neither may apply."""
    tokenizer = TextTokenizer(resolve_model(default_model_path()))
    assert tokenizer.max_length == 256
    long = "word " * 300
    (encoded,) = tokenizer.encode_many([long])
    whole = tokenizer.hf(long)["input_ids"]
    assert len(whole) == 302 and encoded.full_length == 302 and encoded.truncated
    assert encoded.ids == tokenizer.hf(long, truncation=True, max_length=256)["input_ids"]
    (short,) = tokenizer.encode_many(["hello"])
    assert short.ids == tokenizer.hf("hello")["input_ids"]  # no padding
    # The uncut batch is uncut, even past the tokenizer's own 512.
    batch = tokenizer.full_batch(["word " * 600], add_special_tokens=True)
    assert len(batch["input_ids"][0]) == 602


def _byte_level_folder(root: Path, pad: str | None, tokenizer_limit: int) -> Path:
    from textserve.runtime.random_lm import byte_level_tokenizer

    hf = byte_level_tokenizer()
    hf.pad_token = pad
    hf.model_max_length = tokenizer_limit
    root.mkdir()
    hf.save_pretrained(str(root))
    (root / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64}))
    return root


def test_pad_id_and_limit_come_from_the_tokenizer(tmp_path: Path) -> None:
    padded = TextTokenizer(resolve_model(str(_byte_level_folder(tmp_path / "padded", "<|im_end|>", 32))))
    assert padded.pad_id == padded.hf.convert_tokens_to_ids("<|im_end|>") == 2
    assert padded.max_length == 32  # the tokenizer's 32 is below the 64 positions
    unpadded = TextTokenizer(resolve_model(str(_byte_level_folder(tmp_path / "unpadded", None, 10**30))))
    assert unpadded.hf.pad_token_id is None and unpadded.pad_id == 0
    assert unpadded.max_length == 64
