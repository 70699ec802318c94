"""Token classification outside the model: windows of a text and entities from per-token logits.

`TokenWindower` tokenizes one text into windows of at most `max_length` tokens (special
tokens included) that overlap by `stride` tokens, with each token's code-point offsets and
special-token flag: the fast tokenizer's own overflow, as transformers' token-classification
pipeline asks for it when given a `stride`.

`entities` turns the logits of those windows into entities exactly as
`transformers.pipeline("token-classification")` post-processes them: softmax per token,
the word-aware sub-word rule, the aggregation strategies none / simple / first / average /
max, "O" dropped, and, for several windows, the overlap merge (sorted by start; of
overlapping entities the longer, then the higher score, wins). Offsets are code points of
the text (Python str indices), the tokenizer service's convention. Numpy only; no torch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from textserve.runtime.tokenization import TextTokenizer

Strategy = Literal["none", "simple", "first", "average", "max"]
STRATEGIES: tuple[Strategy, ...] = ("none", "simple", "first", "average", "max")
IGNORED_LABELS = ("O",)
"""Labels never reported as entities (the pipeline's default ignore_labels)."""


@dataclass(frozen=True)
class TokenWindow:
    """One window of a text: token ids (special tokens included), each token's code-point
    span and whether it is a special token."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    special: list[bool]


@dataclass(frozen=True)
class Entity:
    """One entity (or, for strategy none, one token): label, probability-like score and the
    code-point span [start, end) of the text; `index` is the token position in its window
    (strategy none only, else -1)."""

    label: str
    score: float
    start: int
    end: int
    index: int = -1


class TokenWindower:
    """Windows of texts for one tokenizer and window length (thread-safe)."""

    def __init__(self, tokenizer: TextTokenizer, max_length: int) -> None:
        from tokenizers import Tokenizer

        hf: Any = tokenizer.hf
        self.hf = hf
        self.max_length = max_length
        self._source = hf.backend_tokenizer.to_str()
        self._tokenizer_type = Tokenizer
        self.specials = int(hf.backend_tokenizer.num_special_tokens_to_add(False))
        self.max_stride = max(0, max_length - self.specials - 1)
        """Largest stride the fast tokenizer accepts for this window length."""
        self.unk_id: int | None = hf.unk_token_id
        model = getattr(getattr(hf, "_tokenizer", None), "model", None)
        self.word_aware = bool(getattr(model, "continuing_subword_prefix", None))
        """The pipeline's test for a word-aware (WordPiece/BPE with a sub-word prefix) tokenizer."""
        self._by_stride: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _tokenizer(self, stride: int) -> Any:
        with self._lock:
            tokenizer = self._by_stride.get(stride)
            if tokenizer is None:
                if len(self._by_stride) >= 8:
                    self._by_stride.pop(next(iter(self._by_stride)))
                tokenizer = self._tokenizer_type.from_str(self._source)
                tokenizer.no_padding()
                tokenizer.enable_truncation(self.max_length, stride=stride, strategy="longest_first")
                self._by_stride[stride] = tokenizer
            return tokenizer

    def windows(self, text: str, stride: int) -> list[TokenWindow]:
        """The windows of `text` (one when it fits), overlapping by `stride` tokens."""
        encoding = self._tokenizer(stride).encode(text)
        return [
            TokenWindow(
                list(part.ids), [tuple(o) for o in part.offsets], [bool(m) for m in part.special_tokens_mask]
            )
            for part in [encoding, *encoding.overflowing]
        ]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, as the pipeline computes it."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass
class _Token:
    scores: np.ndarray
    start: int
    end: int
    index: int
    subword: bool


def _tokens(text: str, window: TokenWindow, scores: np.ndarray, windower: TokenWindower) -> list[_Token]:
    """The pipeline's gather_pre_entities: non-special tokens with their sub-word flag."""
    words = windower.hf.convert_ids_to_tokens(window.ids)
    tokens = []
    for index, (token_id, (start, end), special) in enumerate(
        zip(window.ids, window.offsets, window.special, strict=True)
    ):
        if special:
            continue
        word = words[index]
        if windower.word_aware:
            subword = len(word) != end - start
        else:
            subword = start > 0 and " " not in text[start - 1 : start + 1]
        if token_id == windower.unk_id:
            subword = False
        tokens.append(_Token(scores[index], start, end, index, subword))
    return tokens


def _word(group: list[_Token], strategy: Strategy) -> tuple[int, float, int, int]:
    """The pipeline's aggregate_word: (label id, score, start, end) of one word's tokens."""
    if strategy == "first":
        scores = group[0].scores
    elif strategy == "max":
        scores = max(group, key=lambda token: token.scores.max()).scores
    else:  # average
        scores = np.nanmean(np.stack([token.scores for token in group]), axis=0)
    label = int(scores.argmax())
    return label, float(scores[label]), group[0].start, group[-1].end


def _tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _group(items: list[Entity]) -> list[Entity]:
    """The pipeline's group_entities: adjacent items of one tag, split at each B-."""
    groups: list[list[Entity]] = []
    for item in items:
        bi, tag = _tag(item.label)
        if groups and tag == _tag(groups[-1][-1].label)[1] and bi != "B":
            groups[-1].append(item)
        else:
            groups.append([item])
    return [
        Entity(
            _tag(group[0].label)[1],
            float(np.mean(np.nanmean([item.score for item in group]))),
            group[0].start,
            group[-1].end,
        )
        for group in groups
    ]


def window_items(
    text: str,
    window: TokenWindow,
    logits: np.ndarray,
    labels: Sequence[str],
    strategy: Strategy,
    windower: TokenWindower,
) -> list[Entity]:
    """The pipeline's entities of one window (with "O" items)."""
    scores = softmax(logits)
    tokens = _tokens(text, window, scores, windower)
    if strategy in ("none", "simple"):
        items = []
        for token in tokens:
            label = int(token.scores.argmax())
            items.append(
                Entity(labels[label], float(token.scores[label]), token.start, token.end, token.index)
            )
        return items if strategy == "none" else _group(items)
    words: list[Entity] = []
    group: list[_Token] = []
    for token in tokens:
        if group and not token.subword:
            label, score, start, end = _word(group, strategy)
            words.append(Entity(labels[label], score, start, end))
            group = []
        group.append(token)
    if group:
        label, score, start, end = _word(group, strategy)
        words.append(Entity(labels[label], score, start, end))
    return _group(words)


def merge_overlapping(items: list[Entity]) -> list[Entity]:
    """The pipeline's aggregate_overlapping_entities (results of several windows)."""
    if not items:
        return items
    ordered = sorted(items, key=lambda item: item.start)
    merged: list[Entity] = []
    previous = ordered[0]
    for item in ordered:
        if previous.start <= item.start < previous.end:
            length, previous_length = item.end - item.start, previous.end - previous.start
            if length > previous_length or (length == previous_length and item.score > previous.score):
                previous = item
        else:
            merged.append(previous)
            previous = item
    merged.append(previous)
    return merged


def entities(
    text: str,
    windows: Sequence[TokenWindow],
    logits: Sequence[np.ndarray],
    labels: Sequence[str],
    strategy: Strategy,
    windower: TokenWindower,
    *,
    ignored: Sequence[str] = IGNORED_LABELS,
) -> list[Entity]:
    """The entities of one text from its windows' logits ([tokens, labels] each), as the
    pipeline gives them (with `stride` when there are several windows)."""
    found: list[Entity] = []
    for window, rows in zip(windows, logits, strict=True):
        found.extend(
            item
            for item in window_items(text, window, rows, labels, strategy, windower)
            if item.label not in ignored
        )
    return merge_overlapping(found) if len(windows) > 1 else found


def token_labels(
    text: str,
    windows: Sequence[TokenWindow],
    logits: Sequence[np.ndarray],
    labels: Sequence[str],
    windower: TokenWindower,
) -> list[Entity]:
    """Every non-special token's best label (including "O"), once per span of the text."""
    return entities(text, windows, logits, labels, "none", windower, ignored=())
