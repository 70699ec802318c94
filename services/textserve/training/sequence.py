"""Sequence classification specifics: label ids, tokenization, the model and its dev metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from textserve.training.data import DataError, TextExample
from textserve.training.metrics import classification_metrics
from textserve.training.recipe import EncodedExamples, with_head

BEST_METRIC = "macro_f1"
"""Dev metric that picks the best checkpoint and drives early stopping."""


def label_names(train: Sequence[TextExample], dev: Sequence[TextExample]) -> tuple[str, ...]:
    """The sorted labels of the training data; a dev label never seen in training is an error."""
    labels = tuple(sorted({example.label for example in train}))
    if len(labels) < 2:
        raise DataError(f"the training data has {len(labels)} label(s); at least 2 are needed")
    unseen = sorted({example.label for example in dev} - set(labels))
    if unseen:
        raise DataError(f"dev labels {unseen} do not occur in the training data (labels {list(labels)})")
    return labels


def encode(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TextExample],
    labels: Sequence[str],
    max_length: int,
) -> EncodedExamples:
    """Token ids (truncated to max_length) and label ids of the examples."""
    index = {label: i for i, label in enumerate(labels)}
    encoded = tokenizer([example.text for example in examples], truncation=True, max_length=max_length)
    rows: list[dict[str, Any]] = []
    for i, example in enumerate(examples):
        row = {key: values[i] for key, values in encoded.items()}
        row["labels"] = index[example.label]
        rows.append(row)
    return EncodedExamples(rows)


def load_model(path: str, labels: Sequence[str]) -> PreTrainedModel:
    """The encoder at path with a fresh classification head for labels (id2label / label2id set)."""
    return with_head(AutoModelForSequenceClassification, path, labels)


def collator(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Pads each batch to its longest example."""
    return DataCollatorWithPadding(tokenizer)


def balanced_weights(examples: Sequence[TextExample], labels: Sequence[str]) -> list[float]:
    """scikit-learn's "balanced" class weights of the training labels, in label order."""
    from sklearn.utils.class_weight import compute_class_weight

    index = {label: i for i, label in enumerate(labels)}
    targets = np.array([index[example.label] for example in examples])
    weights = compute_class_weight("balanced", classes=np.arange(len(labels)), y=targets)
    return [float(w) for w in weights]


def weighted_loss(weights: Sequence[float]) -> Callable[..., torch.Tensor]:
    """Class-weighted cross-entropy for the Trainer (compute_loss_func): summed, then divided
    by the examples in the (accumulated) batch, as the Trainer expects."""
    weight = torch.tensor(list(weights), dtype=torch.float32)

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        total = torch.nn.functional.cross_entropy(
            logits.float().view(-1, logits.shape[-1]),
            labels.view(-1),
            weight=weight.to(logits.device),
            reduction="sum",
        )
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return total / count

    return loss


def trainer_metrics(labels: Sequence[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """compute_metrics for the Trainer: the scalar dev metrics (accuracy, macro-F1, macro-recall)."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        predicted = np.asarray(prediction.predictions).reshape(-1)
        actual = np.asarray(prediction.label_ids).reshape(-1)
        metrics = classification_metrics(actual.tolist(), predicted.tolist(), labels)
        return {key: metrics[key] for key in ("accuracy", "macro_f1", "macro_recall")}

    return compute
