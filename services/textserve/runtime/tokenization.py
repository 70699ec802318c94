"""In-process tokenization with a model's Hugging Face fast tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from textserve.runtime.model_files import ModelFiles


@dataclass(frozen=True)
class Encoded:
    """Token ids of one text, with whether it was cut to the maximum length."""

    ids: list[int]
    truncated: bool
    full_length: int


class TextTokenizer:
    """Wraps a fast tokenizer: encode with truncation at `max_length`, decode, count."""

    def __init__(self, files: ModelFiles, max_length: int = 0) -> None:
        from transformers import AutoTokenizer

        self.files = files
        self.hf: Any = AutoTokenizer.from_pretrained(str(files.path), use_fast=True)
        self.max_length = max_length or model_max_length(files, self.hf)
        self.pad_id = int(self.hf.pad_token_id if self.hf.pad_token_id is not None else 0)
        self.special_ids: set[int] = {int(i) for i in self.hf.all_special_ids}
        """Ids of the tokenizer's special tokens."""
        self.end_special_id = appended_end_id(self.hf, self.special_ids)
        """The special token the tokenizer appends to every text (e.g. [SEP], </s>); None when
        it appends none (GPT-2, Llama): the one special token a cut keeps."""
        # The Rust tokenizer itself, without the tokenizer.json's own truncation/padding
        # (we cut at max_length ourselves): skips the Python wrapper on the request path.
        self._fast: Any = None
        backend = getattr(self.hf, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_str(backend.to_str())
            self._fast.no_truncation()
            self._fast.no_padding()

    def encode_many(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[Encoded]:
        """Token ids for each text; texts over max_length are cut (and flagged)."""
        if self._fast is not None:
            if len(texts) == 1:
                # One text: `encode` holds the interpreter lock; `encode_batch_fast` lets it go and
                # must win it back from the batch and gRPC threads, which costs a busy event loop
                # several times the ~35 us the text takes (measured: 79 vs 193 us with one other
                # thread running Python).
                encoding = self._fast.encode(texts[0], add_special_tokens=add_special_tokens)
                return [self.truncate(encoding.ids, add_special_tokens)]
            encodings = self._fast.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)
            return [self.truncate(encoding.ids, add_special_tokens) for encoding in encodings]
        batch = self.full_batch(texts, add_special_tokens)["input_ids"]
        return [self.truncate(list(ids), add_special_tokens) for ids in batch]

    def full_batch(self, texts: Sequence[str], add_special_tokens: bool) -> Any:
        """The Hugging Face batch encoding of texts, uncut, without attention masks or token
        type ids (`input_ids`, and `encodings` for tokens and offsets)."""
        return self.hf(
            list(texts),
            add_special_tokens=add_special_tokens,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )

    def truncate(self, ids: list[int], with_special_tokens: bool = True) -> Encoded:
        """Cuts ids to max_length, keeping the final special token the tokenizer appends
        (e.g. [SEP]) when `ids` end in it and carry special tokens; an [UNK] or a special token
        written in the text is cut like any other token (as Hugging Face truncation does)."""
        full = len(ids)
        if full <= self.max_length:
            return Encoded(ids, False, full)
        kept = kept_positions(full, self.max_length, self.ends_with_special(ids, with_special_tokens))
        return Encoded([ids[i] for i in kept], True, full)

    def ends_with_special(self, ids: Sequence[int], with_special_tokens: bool) -> bool:
        """Whether the last of `ids` is the special token the tokenizer appended."""
        return with_special_tokens and len(ids) > 0 and int(ids[-1]) == self.end_special_id


def appended_end_id(hf: Any, special_ids: set[int]) -> int | None:
    """The special token id `hf` appends after every text (e.g. [SEP], </s>), else None."""
    with_special = list(hf("a", add_special_tokens=True)["input_ids"])
    without = list(hf("a", add_special_tokens=False)["input_ids"])
    if with_special and with_special[-1] in special_ids and with_special[-1:] != without[-1:]:
        return int(with_special[-1])
    return None


def kept_positions(length: int, limit: int, last_is_special: bool) -> list[int]:
    """Positions kept when `length` tokens are cut to `limit` (0: no cut).

    The first limit tokens stay; when the last token is the special token the tokenizer
    appended (e.g. [SEP]; `TextTokenizer.ends_with_special`) it replaces
    the last kept one.
    The one truncation rule: the model services' truncate and the tokenizer service's
    max_tokens cut both use it.
    """
    if limit <= 0 or length <= limit:
        return list(range(length))
    kept = list(range(limit))
    if last_is_special:
        kept[-1] = length - 1
    return kept


def model_max_length(files: ModelFiles, hf_tokenizer: Any | None = None) -> int:
    """Longest input the model takes: sentence-transformers' max_seq_length when present,
    else the smaller of the tokenizer's and the position embeddings' limits."""
    st_config = files.read_json("sentence_bert_config.json")
    if st_config and isinstance(st_config.get("max_seq_length"), int):
        return int(st_config["max_seq_length"])
    limits: list[int] = []
    config = files.read_json("config.json") or {}
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(config.get(key), int):
            limits.append(int(config[key]))
            break
    if hf_tokenizer is not None:
        tok_max = getattr(hf_tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 1_000_000:
            limits.append(tok_max)
    return min(limits) if limits else 512
