"""Training a linear head on embeddings: read (text, label) data, split, fit, evaluate.

Pure computation over vectors the caller supplies (the `train-classifier` command gets
them in-process or from the embedding service). The split is stratified and seeded; the
head is a multinomial logistic regression with L2 regularisation fitted by L-BFGS on the
training part; the report is accuracy, macro-F1 and the confusion matrix on the held-out
part (the saved head is the one evaluated).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TrainingDataError(ValueError):
    """The training data is unreadable or unusable; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One labelled text."""

    text: str
    label: str


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


def read_examples(path: Path) -> list[Example]:
    """(text, label) rows of a CSV file with a `text,label` header, or of a JSONL file."""
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such file")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    raise TrainingDataError(f"{path}: use a .csv (text,label header) or .jsonl file")


def _example(text: object, label: object, where: str) -> Example:
    if not isinstance(text, str) or not text.strip():
        raise TrainingDataError(f"{where}: 'text' must be a non-empty string")
    if not isinstance(label, (str, int)) or not str(label).strip():
        raise TrainingDataError(f"{where}: 'label' must be a non-empty string")
    return Example(text, str(label).strip())


def _read_jsonl(path: Path) -> list[Example]:
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{path}:{number}: not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise TrainingDataError(f"{path}:{number}: expected an object with 'text' and 'label'")
            examples.append(_example(row.get("text"), row.get("label"), f"{path}:{number}"))
    return examples


def _read_csv(path: Path) -> list[Example]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "text" not in fields or "label" not in fields:
            raise TrainingDataError(f"{path}: the header must name 'text' and 'label' columns (got {fields})")
        return [_example(row.get("text"), row.get("label"), f"{path}:{reader.line_num}") for row in reader]


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
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (weight [labels, dim], bias [labels]) by full-batch L-BFGS."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    y = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    weight = torch.zeros((n_labels, x.shape[1]), requires_grad=True)
    bias = torch.zeros(n_labels, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + l2 * (weight * weight).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach().numpy().copy(), bias.detach().numpy().copy()


def evaluate(
    predicted: Sequence[int], actual: Sequence[int], labels: Sequence[str], train_size: int
) -> Report:
    """Accuracy, per-label and macro F1, and the confusion matrix."""
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    for truth, guess in zip(actual, predicted, strict=True):
        confusion[truth, guess] += 1
    total = int(confusion.sum())
    accuracy = float(np.trace(confusion) / total) if total else 0.0
    f1: list[float] = []
    for i in range(n):
        tp = float(confusion[i, i])
        fp = float(confusion[:, i].sum() - tp)
        fn = float(confusion[i, :].sum() - tp)
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return Report(
        tuple(labels), accuracy, float(np.mean(f1)) if f1 else 0.0, tuple(f1), confusion, train_size, total
    )


def format_report(report: Report) -> str:
    """Accuracy, macro-F1 and the confusion matrix as text (rows: true label, columns: predicted)."""
    width = max(8, *(len(label) for label in report.labels)) + 1
    lines = [
        f"held-out evaluation: {report.test_size} texts (trained on {report.train_size})",
        f"accuracy  {report.accuracy:.4f}",
        f"macro-F1  {report.macro_f1:.4f}",
        "per-label F1: "
        + ", ".join(f"{label}={f:.3f}" for label, f in zip(report.labels, report.f1, strict=True)),
        "confusion matrix (rows: true label, columns: predicted):",
        " " * width + "".join(f"{label:>{width}}" for label in report.labels),
    ]
    for label, row in zip(report.labels, report.confusion, strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"{int(count):>{width}}" for count in row))
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
) -> Trained:
    """Splits, fits on the training part, evaluates on the held-out part."""
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
    weight, bias = fit(vectors[train_idx], targets[train_idx], len(labels), l2=l2, seed=seed)
    predicted = np.argmax(vectors[test_idx] @ weight.T + bias, axis=1)
    report = evaluate(predicted.tolist(), targets[test_idx].tolist(), labels, len(train_idx))
    return Trained(weight, bias, labels, report)
