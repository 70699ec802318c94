"""Token classification specifics: tag ids, word-piece label alignment, the model, dev metrics.

Only the first sub-token of each word carries the word's tag; the other sub-tokens and the
special tokens get -100 (ignored by the loss and the metrics). Dev predictions are read at
the same first sub-tokens, so metrics are per word; words cut off by max_seq_length are
left out of both the gold and the predicted sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from transformers import (
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from textserve.training.conll import TaggedSentence
from textserve.training.data import DataError
from textserve.training.metrics import entity_metrics
from textserve.training.recipe import EncodedExamples, with_head

BEST_METRIC = "f1"
"""Dev metric (entity-level F1) that picks the best checkpoint and drives early stopping."""

IGNORED = -100
"""Label id the loss and the metrics skip."""


def tag_names(train: Sequence[TaggedSentence], dev: Sequence[TaggedSentence]) -> tuple[str, ...]:
    """ "O" then the training tags sorted by type, B- before I-; an unseen dev tag is an error."""
    seen = {tag for sentence in train for tag in sentence.tags}
    others = sorted(seen - {"O"}, key=lambda tag: (tag[2:], tag[0]))
    tags = ("O", *others)
    if len(tags) < 2:
        raise DataError("the training data has no entity tags")
    unseen = sorted({tag for sentence in dev for tag in sentence.tags} - set(tags))
    if unseen:
        raise DataError(f"dev tags {unseen} do not occur in the training data (tags {list(tags)})")
    return tags


def encode(
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[TaggedSentence],
    tags: Sequence[str],
    max_length: int,
) -> EncodedExamples:
    """Word-piece ids of the sentences (words as given) with each word's tag id on its first piece."""
    if not tokenizer.is_fast:
        raise DataError("token classification needs a fast tokenizer (tokenizer.json) for word alignment")
    index = {tag: i for i, tag in enumerate(tags)}
    encoded = tokenizer(
        [list(sentence.words) for sentence in sentences],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
    )
    rows: list[dict[str, Any]] = []
    for i, sentence in enumerate(sentences):
        row = {key: values[i] for key, values in encoded.items()}
        row["labels"] = aligned_labels(encoded.word_ids(i), [index[tag] for tag in sentence.tags])
        rows.append(row)
    return EncodedExamples(rows)


def aligned_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Per-token labels: the word's label on its first piece, IGNORED elsewhere."""
    labels: list[int] = []
    previous: int | None = None
    for word in word_ids:
        labels.append(IGNORED if word is None or word == previous else word_labels[word])
        previous = word
    return labels


def load_model(path: str, tags: Sequence[str]) -> PreTrainedModel:
    """The encoder at path with a fresh token-classification head for tags."""
    return with_head(AutoModelForTokenClassification, path, tags)


def collator(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Pads each batch (labels with IGNORED)."""
    return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORED)


def word_tags(
    predicted: np.ndarray, label_ids: np.ndarray, tags: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tag sequences per sentence, read at the labelled positions."""
    gold: list[list[str]] = []
    guessed: list[list[str]] = []
    for predicted_row, label_row in zip(predicted, label_ids, strict=True):
        keep = label_row != IGNORED
        gold.append([tags[i] for i in label_row[keep]])
        guessed.append([tags[i] for i in predicted_row[keep]])
    return gold, guessed


def trainer_metrics(tags: Sequence[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """compute_metrics for the Trainer: entity precision, recall, F1 and token accuracy."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        gold, guessed = word_tags(np.asarray(prediction.predictions), np.asarray(prediction.label_ids), tags)
        metrics = entity_metrics(gold, guessed)
        return {key: metrics[key] for key in ("precision", "recall", "f1", "token_accuracy")}

    return compute
