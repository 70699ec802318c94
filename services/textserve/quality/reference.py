"""Reference samples of drift detection: what a model version's inputs and outputs look like.

A `Reference` holds embedding vectors and/or classifier outputs (top label and confidence)
of a sample of texts. `build_reference` makes one from texts with any embed/classify
callables (a command runs it over a file of texts with the service's own model);
`save_reference` / `load_reference` keep it in one .npz file that the services read at
startup. The other source of a reference, the first N inputs after a version starts, is
captured by `monitor.DriftMonitor`. A reference never holds texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Embed = Callable[[list[str]], np.ndarray]
"""Texts -> one vector per text (rows)."""
Classify = Callable[[list[str]], tuple[Sequence[str], Sequence[float]]]
"""Texts -> (top label, top score) per text."""


@dataclass(frozen=True)
class Reference:
    """A reference sample; either part may be missing (embedding-only or classifier-only)."""

    vectors: np.ndarray | None = None
    """Embeddings (n x d, float32)."""
    labels: tuple[str, ...] | None = None
    """Top label of each reference prediction."""
    confidences: np.ndarray | None = None
    """Top score of each reference prediction (same length as labels)."""

    def __post_init__(self) -> None:
        if self.vectors is not None and (self.vectors.ndim != 2 or self.vectors.shape[0] < 2):
            raise ValueError(f"reference vectors must be n x d with n >= 2, got {self.vectors.shape}")
        if (self.labels is None) != (self.confidences is None):
            raise ValueError("reference labels and confidences come together")
        if (
            self.labels is not None
            and self.confidences is not None
            and (len(self.labels) != len(self.confidences) or not self.labels)
        ):
            counts = f"{len(self.labels)} labels and {len(self.confidences)} confidences"
            raise ValueError(f"reference has {counts}")


def read_texts(path: Path) -> list[str]:
    """One text per line of a UTF-8 file; blank lines are skipped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_reference(
    texts: Sequence[str],
    *,
    embed: Embed | None = None,
    classify: Classify | None = None,
    batch_size: int = 64,
) -> Reference:
    """Runs the given model callables over `texts` in batches and keeps their outputs."""
    if embed is None and classify is None:
        raise ValueError("build_reference needs embed, classify or both")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    vectors: list[np.ndarray] = []
    labels: list[str] = []
    confidences: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        if embed is not None:
            vectors.append(np.asarray(embed(batch), dtype=np.float32))
        if classify is not None:
            batch_labels, batch_confidences = classify(batch)
            labels.extend(batch_labels)
            confidences.extend(float(c) for c in batch_confidences)
    return Reference(
        vectors=np.concatenate(vectors) if vectors else None,
        labels=tuple(labels) if classify is not None else None,
        confidences=np.asarray(confidences, dtype=np.float64) if classify is not None else None,
    )


def save_reference(path: Path, reference: Reference) -> None:
    """Writes the reference to one .npz file (no pickles)."""
    arrays: dict[str, np.ndarray] = {}
    if reference.vectors is not None:
        arrays["vectors"] = np.asarray(reference.vectors, dtype=np.float32)
    if reference.labels is not None and reference.confidences is not None:
        arrays["labels"] = np.asarray(reference.labels, dtype=np.str_)
        arrays["confidences"] = np.asarray(reference.confidences, dtype=np.float64)
    with path.open("wb") as file:
        np.savez_compressed(file, **arrays)  # type: ignore[arg-type]


def load_reference(path: Path) -> Reference:
    """Reads a reference written by `save_reference`."""
    with np.load(path, allow_pickle=False) as data:
        vectors = np.asarray(data["vectors"], dtype=np.float32) if "vectors" in data else None
        labels = tuple(str(label) for label in data["labels"]) if "labels" in data else None
        confidences = np.asarray(data["confidences"], dtype=np.float64) if "confidences" in data else None
    return Reference(vectors=vectors, labels=labels, confidences=confidences)
