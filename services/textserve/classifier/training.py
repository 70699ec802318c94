"""Training a linear head on embeddings: read (text, label) data, split, fit, evaluate.

Pure computation over vectors the caller supplies (the `train-classifier` command gets
them in-process or from the embedding service). The split is stratified and seeded; the
head is a multinomial logistic regression with L2 regularisation fitted by L-BFGS on the
training part, with a class-weighted loss by default (scikit-learn's "balanced" weights,
n_samples / (n_classes * count), so a small class is not ignored); the report is
accuracy, macro-F1, per-class F1 and recall and the confusion matrix on the held-out part
(the saved head is the one evaluated), and a class with recall 0 there is a loud warning.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textserve.training.data import DataError, TextExample, read_text_examples

log = logging.getLogger(__name__)


TrainingDataError = DataError
"""The training data is unreadable or unusable; the message names the file and line."""

Example = TextExample
"""One labelled text."""


@dataclass(frozen=True)
class Report:
    """Held-out evaluation of a head."""

    labels: tuple[str, ...]
    accuracy: float
    macro_f1: float
    f1: tuple[float, ...]
    confusion: np.ndarray
    """[true label, predicted label] counts."""
    train_size: int
    test_size: int
    recall: tuple[float, ...] = ()
    """Per-label recall, in label order."""
    class_weights: tuple[float, ...] = ()
    """Loss weight of each label during training (empty: unweighted)."""

    @property
    def macro_recall(self) -> float:
        """Mean of the per-label recalls (balanced accuracy)."""
        return float(np.mean(self.recall)) if self.recall else 0.0

    @property
    def unrecalled(self) -> tuple[str, ...]:
        """Labels with held-out examples of which none was predicted right (recall 0)."""
        support = self.confusion.sum(axis=1)
        return tuple(
            label
            for label, recall, count in zip(self.labels, self.recall, support, strict=True)
            if count > 0 and recall == 0.0
        )


def read_examples(path: Path) -> list[Example]:
    """(text, label) rows of a labelled file: CSV or TSV with a `text,label` header, JSONL, or
    `<label> <text>` lines (SST); one reader for every trainer (training/data.py)."""
    return read_text_examples(path)


def split(labels: Sequence[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified (train, test) indices: about test_fraction of each label, at least one per
    label held out and at least one kept for training."""
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        held = min(len(members) - 1, max(1, round(len(members) * test_fraction)))
        test.extend(members[:held])
        train.extend(members[held:])
    return sorted(train), sorted(test)


def fit(
    vectors: np.ndarray,
    targets: np.ndarray,
    n_labels: int,
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
    class_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (weight [labels, dim], bias [labels]) by full-batch L-BFGS;
    class_weight (one per label) weights each example's loss by its label's weight."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    y = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    weight = torch.zeros((n_labels, x.shape[1]), requires_grad=True)
    bias = torch.zeros(n_labels, requires_grad=True)
    loss_weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight.T + bias
        loss = torch.nn.functional.cross_entropy(logits, y, weight=loss_weight) + l2 * (weight * weight).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach().numpy().copy(), bias.detach().numpy().copy()


def evaluate(
    predicted: Sequence[int],
    actual: Sequence[int],
    labels: Sequence[str],
    train_size: int,
    class_weights: Sequence[float] = (),
) -> Report:
    """Accuracy, per-label F1 and recall, macro-F1 and the confusion matrix (scikit-learn)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    ids = list(range(len(labels)))
    confusion = confusion_matrix(actual, predicted, labels=ids).astype(np.int64)
    total = int(confusion.sum())
    accuracy = float(accuracy_score(actual, predicted)) if total else 0.0
    f1 = [float(v) for v in f1_score(actual, predicted, labels=ids, average=None, zero_division=0)]
    recall = [float(v) for v in recall_score(actual, predicted, labels=ids, average=None, zero_division=0)]
    return Report(
        tuple(labels),
        accuracy,
        float(np.mean(f1)) if f1 else 0.0,
        tuple(f1),
        confusion,
        train_size,
        total,
        tuple(recall),
        tuple(float(w) for w in class_weights),
    )


def balanced_class_weights(targets: np.ndarray, n_labels: int) -> np.ndarray:
    """scikit-learn's "balanced" weights, n_samples / (n_labels * count), one per label."""
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.arange(n_labels)
    return np.asarray(compute_class_weight("balanced", classes=classes, y=targets), dtype=np.float32)


def unrecalled_warning(report: Report) -> str:
    """The loud warning for labels with recall 0 on the held-out part ("" when none)."""
    if not report.unrecalled:
        return ""
    names = ", ".join(repr(label) for label in report.unrecalled)
    return (
        f"WARNING: recall 0 on the held-out split for {names}: the head never predicts "
        "these labels right; add examples of them or check the labels before serving this head"
    )


def format_report(report: Report) -> str:
    """Accuracy, macro-F1, per-label F1 and recall, the confusion matrix (rows: true label,
    columns: predicted) and the recall-0 warning as text."""
    width = max(8, *(len(label) for label in report.labels)) + 1
    lines = [
        f"held-out evaluation: {report.test_size} texts (trained on {report.train_size})",
        f"accuracy  {report.accuracy:.4f}",
        f"macro-F1  {report.macro_f1:.4f}",
        f"macro-recall  {report.macro_recall:.4f}",
        "per-label F1: "
        + ", ".join(f"{label}={f:.3f}" for label, f in zip(report.labels, report.f1, strict=True)),
        "per-label recall: "
        + ", ".join(f"{label}={r:.3f}" for label, r in zip(report.labels, report.recall, strict=True)),
    ]
    if report.class_weights:
        lines.append(
            "class weights (balanced loss): "
            + ", ".join(
                f"{label}={w:.3f}" for label, w in zip(report.labels, report.class_weights, strict=True)
            )
        )
    lines += [
        "confusion matrix (rows: true label, columns: predicted):",
        " " * width + "".join(f"{label:>{width}}" for label in report.labels),
    ]
    for label, row in zip(report.labels, report.confusion, strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"{int(count):>{width}}" for count in row))
    warning = unrecalled_warning(report)
    if warning:
        bar = "!" * min(len(warning), 100)
        lines += [bar, warning, bar]
    return "\n".join(lines)


@dataclass(frozen=True)
class Trained:
    """A fitted head's weights with its label names and held-out report."""

    weight: np.ndarray
    bias: np.ndarray
    labels: tuple[str, ...]
    report: Report


def train(
    vectors: np.ndarray,
    examples: Sequence[Example],
    *,
    test_fraction: float = 0.2,
    l2: float = 1e-3,
    seed: int = 0,
    class_weighted: bool = True,
) -> Trained:
    """Splits, fits on the training part (class-weighted loss unless class_weighted is
    False), evaluates on the held-out part; logs a warning for any label with recall 0."""
    if len(examples) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors for {len(examples)} examples")
    labels = tuple(sorted({example.label for example in examples}))
    if len(labels) < 2:
        raise TrainingDataError(f"the data has {len(labels)} label(s); at least 2 are needed")
    index = {label: i for i, label in enumerate(labels)}
    targets = np.array([index[example.label] for example in examples], dtype=np.int64)
    counts = np.bincount(targets, minlength=len(labels))
    if counts.min() < 2:
        rare = [labels[i] for i in range(len(labels)) if counts[i] < 2]
        raise TrainingDataError(
            f"labels {rare} have fewer than 2 examples; each needs one to train and one to test"
        )
    train_idx, test_idx = split(targets.tolist(), test_fraction, seed)
    weights = balanced_class_weights(targets[train_idx], len(labels)) if class_weighted else None
    weight, bias = fit(
        vectors[train_idx], targets[train_idx], len(labels), l2=l2, seed=seed, class_weight=weights
    )
    predicted = np.argmax(vectors[test_idx] @ weight.T + bias, axis=1)
    report = evaluate(
        predicted.tolist(),
        targets[test_idx].tolist(),
        labels,
        len(train_idx),
        () if weights is None else weights.tolist(),
    )
    warning = unrecalled_warning(report)
    if warning:
        log.warning(warning)
    return Trained(weight, bias, labels, report)
