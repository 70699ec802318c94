"""Incremental detokenization and stop sequences, with real tokenizers (byte-level BPE, WordPiece)."""

from __future__ import annotations

from typing import Any

import pytest
from textserve.generation.detokenize import IncrementalDetokenizer, StopMatcher

TEXTS = [
    "Hello world, how are you?",
    "日本語 🚀✨ Привет café naïve",
    "def main():\n    return 0",
    "unbelievably playful kubernetes schedulers",
]


@pytest.fixture(scope="module")
def byte_level() -> Any:
    from textserve.runtime.random_lm import byte_level_tokenizer

    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def wordpiece() -> Any:
    from textserve.core.config import default_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def sentencepiece() -> Any:
    """A SentencePiece-style tokenizer (Metaspace "▁" pieces and decoder, as Llama and T5 use),
    trained here on a few sentences: a lone piece decodes without its leading space."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    core = SentencePieceBPETokenizer()
    corpus = TEXTS + ["Hello there, the world is wide and the schedulers are playful."] * 3
    core.train_from_iterator(corpus, vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=core._tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def stream(tokenizer: Any, prompt_ids: list[int], ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    return [detokenizer.add(i) for i in ids] + [detokenizer.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_deltas_never_split_a_character(byte_level: Any, text: str) -> None:
    ids = byte_level(text)["input_ids"]
    deltas = stream(byte_level, byte_level("Prompt: ")["input_ids"], ids)
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)


def test_byte_level_single_tokens_do_split_characters(byte_level: Any) -> None:
    """The case the detokenizer exists for: one token holds part of a character."""
    ids = byte_level("🚀")["input_ids"]
    assert len(ids) > 1 and "\ufffd" in byte_level.decode(ids[:1])


@pytest.mark.parametrize("text", ["unbelievably playful kubernetes schedulers", "tokenization isn't trivial"])
def test_wordpiece_words_are_joined(wordpiece: Any, text: str) -> None:
    ids = wordpiece(text, add_special_tokens=False)["input_ids"]
    assert any(wordpiece.convert_ids_to_tokens(i).startswith("##") for i in ids)
    deltas = stream(wordpiece, [wordpiece.cls_token_id], ids)
    assert "".join(deltas) == wordpiece.decode(ids, clean_up_tokenization_spaces=False)
    assert not any(delta.startswith("##") or "##" in delta for delta in deltas)


def test_first_word_gets_its_space_from_the_prompt(byte_level: Any) -> None:
    prompt = byte_level("Hello")["input_ids"]
    ids = byte_level(" world")["input_ids"]
    assert "".join(stream(byte_level, prompt, ids)) == " world"


@pytest.mark.parametrize("family", ["wordpiece", "sentencepiece", "byte_level"])
@pytest.mark.parametrize(
    "continuation", ["world is wide", "playful kubernetes schedulers", ", said she.", "ing and more 🚀"]
)
def test_deltas_equal_the_whole_decode_after_the_prompt(
    request: pytest.FixtureRequest, family: str, continuation: str
) -> None:
    """Exactly, spaces included: the deltas are what decoding prompt + generated ids adds to
    the decoded prompt (WordPiece and SentencePiece drop the space before a lone first word;
    only the prompt as context gives it back)."""
    tokenizer = request.getfixturevalue(family)
    prompt = tokenizer("Hello there")["input_ids"]  # with the family's special tokens, if any
    ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    prefix, whole = decode(prompt), decode(prompt + ids)
    assert whole.startswith(prefix) and len(whole) > len(prefix)
    assert "".join(stream(tokenizer, prompt, ids)) == whole[len(prefix) :]


def test_special_tokens_are_not_rendered(byte_level: Any) -> None:
    ids = byte_level("hi")["input_ids"] + [byte_level.eos_token_id]
    assert "".join(stream(byte_level, [], ids)) == "hi"


def test_invalid_bytes_do_not_stall_the_stream(byte_level: Any) -> None:
    """A run of bytes that never forms a character is sent after a few tokens, not held forever."""
    lone = [i for i in range(len(byte_level)) if byte_level.decode([i]) == "\ufffd"][:10]
    assert len(lone) == 10
    detokenizer = IncrementalDetokenizer(byte_level, [])
    deltas = [detokenizer.add(i) for i in lone]
    assert "".join(deltas)  # something went out before the end


def test_stop_matcher_holds_back_a_possible_stop() -> None:
    matcher = StopMatcher(["STOP", "END"])
    assert matcher.feed("hello S") == ("hello ", False)
    assert matcher.feed("T") == ("", False)
    assert matcher.feed("x") == ("STx", False)
    assert matcher.feed(" and E") == (" and ", False)
    assert matcher.feed("ND more") == ("", True)


def test_stop_matcher_cuts_at_the_earliest_stop() -> None:
    matcher = StopMatcher(["bb", "a"])
    assert matcher.feed("xxbbya") == ("xx", True)


def test_stop_matcher_flushes_a_held_prefix_at_the_end() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("the ST") == ("the ", False)
    assert matcher.flush() == "ST"


def test_no_stops_passes_text_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("anything STOP") == ("anything STOP", False)
