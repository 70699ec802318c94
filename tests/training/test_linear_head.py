"""The linear head (`train-classifier`): class-weighted loss by default, per-class recall in
the report, and a loud warning for a class with recall 0 on the held-out split."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from textserve.classifier.training import (
    Example,
    balanced_class_weights,
    evaluate,
    format_report,
    train,
    unrecalled_warning,
)


def imbalanced(seed: int = 0) -> tuple[np.ndarray, list[Example]]:
    """Two big overlapping classes and a small one between them (about 8 % of the data)."""
    rng = np.random.default_rng(seed)
    sizes = {"negative": 300, "neutral": 50, "positive": 300}
    centers = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
    vectors, examples = [], []
    for label, size in sizes.items():
        points = np.zeros((size, 4))
        points[:, 0] = centers[label] + 0.55 * rng.standard_normal(size)
        points[:, 1:] = rng.standard_normal((size, 3))
        vectors.append(points)
        examples += [Example(f"{label}{i}", label) for i in range(size)]
    return np.concatenate(vectors).astype(np.float32), examples


def test_balanced_weights_are_sklearns() -> None:
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])


def test_class_weighting_recovers_the_small_class(caplog: pytest.LogCaptureFixture) -> None:
    vectors, examples = imbalanced()
    with caplog.at_level(logging.WARNING, logger="textserve.classifier.training"):
        plain = train(vectors, examples, class_weighted=False, l2=1e-2)
    weighted = train(vectors, examples, l2=1e-2)
    neutral = plain.labels.index("neutral")
    assert plain.report.recall[neutral] == 0.0  # unweighted: the small class is never predicted
    assert "neutral" in plain.report.unrecalled
    assert any("recall 0" in record.getMessage() for record in caplog.records)
    assert weighted.report.recall[neutral] >= 0.3
    assert weighted.report.macro_recall > plain.report.macro_recall
    assert weighted.report.unrecalled == ()
    assert len(weighted.report.class_weights) == 3 and plain.report.class_weights == ()


def test_report_shows_recall_and_the_loud_warning() -> None:
    report = evaluate([0, 0, 0, 2, 2], [0, 0, 1, 2, 2], ["a", "b", "c"], train_size=20)
    assert report.recall == (1.0, 0.0, 1.0) and report.macro_recall == pytest.approx(2 / 3)
    assert report.unrecalled == ("b",)
    text = format_report(report)
    assert "macro-recall  0.6667" in text and "per-label recall: a=1.000, b=0.000, c=1.000" in text
    assert "WARNING: recall 0 on the held-out split for 'b'" in text and "!!!!" in text
    assert unrecalled_warning(evaluate([0, 1], [0, 1], ["a", "b"], train_size=2)) == ""
    # a label with no held-out example is not "recall 0"
    assert evaluate([0, 0], [0, 0], ["a", "b"], train_size=2).unrecalled == ()
