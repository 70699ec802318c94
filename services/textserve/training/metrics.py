"""Dev-split metrics: scikit-learn for sequence classification, seqeval for entities.

Sequence classification: accuracy, macro-F1, macro-recall, per-class recall and F1, the
confusion matrix (rows: true label, columns: predicted). Token classification:
entity-level precision, recall and F1 (micro over entities) and per entity type, by
seqeval in strict IOB2 mode (an entity counts only with exact type and boundaries).
All values are plain Python numbers, ready for JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def classification_metrics(
    actual: Sequence[int], predicted: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, macro-recall, per-class recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(labels)))
    _, recall, f1, support = precision_recall_fscore_support(
        actual, predicted, labels=ids, average=None, zero_division=0
    )
    return {
        "examples": len(actual),
        "accuracy": float(accuracy_score(actual, predicted)),
        "macro_f1": float(sum(f1) / len(ids)),
        "macro_recall": float(sum(recall) / len(ids)),
        "per_class_recall": {label: float(r) for label, r in zip(labels, recall, strict=True)},
        "per_class_f1": {label: float(f) for label, f in zip(labels, f1, strict=True)},
        "support": {label: int(s) for label, s in zip(labels, support, strict=True)},
        "confusion_matrix": confusion_matrix(actual, predicted, labels=ids).tolist(),
    }


def entity_metrics(actual: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level precision, recall and F1, overall (micro) and per type (seqeval, strict IOB2)."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    true_tags = [list(tags) for tags in actual]
    pred_tags = [list(tags) for tags in predicted]
    report = classification_report(
        true_tags, pred_tags, mode="strict", scheme=IOB2, output_dict=True, zero_division=0
    )
    overall = report.get("micro avg", {})
    per_type = {
        name: {
            "precision": float(values["precision"]),
            "recall": float(values["recall"]),
            "f1": float(values["f1-score"]),
            "support": int(values["support"]),
        }
        for name, values in sorted(report.items())
        if not name.endswith(" avg")
    }
    tokens = sum(len(tags) for tags in true_tags)
    right = sum(
        t == p for ts, ps in zip(true_tags, pred_tags, strict=True) for t, p in zip(ts, ps, strict=True)
    )
    return {
        "sentences": len(true_tags),
        "precision": float(overall.get("precision", 0.0)),
        "recall": float(overall.get("recall", 0.0)),
        "f1": float(overall.get("f1-score", 0.0)),
        "token_accuracy": right / tokens if tokens else 0.0,
        "per_type": per_type,
    }


def format_classification(metrics: dict[str, Any], labels: Sequence[str]) -> str:
    """The classification metrics as text, with a warning line for any class of recall 0."""
    width = max(8, *(len(label) for label in labels)) + 1
    recall = metrics["per_class_recall"]
    lines = [
        f"dev examples  {metrics['examples']}",
        f"accuracy      {metrics['accuracy']:.4f}",
        f"macro-F1      {metrics['macro_f1']:.4f}",
        f"macro-recall  {metrics['macro_recall']:.4f}",
        "per-class recall: " + ", ".join(f"{label}={recall[label]:.3f}" for label in labels),
        "confusion matrix (rows: true label, columns: predicted):",
        " " * width + "".join(f"{label:>{width}}" for label in labels),
    ]
    for label, row in zip(labels, metrics["confusion_matrix"], strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"{count:>{width}}" for count in row))
    silent = [label for label in labels if recall[label] == 0.0 and metrics["support"][label] > 0]
    if silent:
        lines.append(f"WARNING: recall 0 on the dev split for {', '.join(map(repr, silent))}")
    return "\n".join(lines)


def format_entities(metrics: dict[str, Any]) -> str:
    """The entity metrics as text: overall, then one line per type."""
    lines = [
        f"dev sentences {metrics['sentences']}",
        f"entity precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}  "
        f"F1 {metrics['f1']:.4f}  (seqeval, strict IOB2)",
    ]
    for name, values in metrics["per_type"].items():
        lines.append(
            f"  {name:<8} precision {values['precision']:.4f}  recall {values['recall']:.4f}  "
            f"F1 {values['f1']:.4f}  support {values['support']}"
        )
    return "\n".join(lines)
