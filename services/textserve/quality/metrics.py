"""Prometheus metrics of model quality, on the shared registry of `textserve.core.metrics`.

Prediction statistics (label mix, confidence, embedding norm, token length, entities),
drift-test results, and live accuracy from feedback, all labelled by service, model and
version. Besides those three, labels here are bounded by the model itself: `label` and
`entity_type` are the model's own class names, `detector` one of four names, `result` one
of three; request data never goes into a label. The functions below are the only writers.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import Counter, Gauge, Histogram

from textserve.core.metrics import REGISTRY, child

_KEY = ["service", "model", "version"]
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
_NORM_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 50.0)
_TOKEN_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_CPU_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# --- Prediction statistics ----------------------------------------------------------------
PREDICTIONS = Counter(
    "textserve_predictions_total",
    "Texts classified, by predicted (top) label.",
    [*_KEY, "label"],
    registry=REGISTRY,
)
PREDICTION_CONFIDENCE = Histogram(
    "textserve_prediction_confidence",
    "Top score (probability of the predicted label) of each classified text.",
    _KEY,
    buckets=_CONFIDENCE_BUCKETS,
    registry=REGISTRY,
)
EMBEDDING_NORM = Histogram(
    "textserve_embedding_norm",
    "L2 norm of each embedding before normalisation.",
    _KEY,
    buckets=_NORM_BUCKETS,
    registry=REGISTRY,
)
TEXT_TOKENS = Histogram(
    "textserve_text_tokens",
    "Tokens of each input text (after truncation, special tokens included).",
    _KEY,
    buckets=_TOKEN_BUCKETS,
    registry=REGISTRY,
)
ENTITIES = Counter(
    "textserve_entities_total",
    "Entities found by token classification (NER), by entity type.",
    [*_KEY, "entity_type"],
    registry=REGISTRY,
)

# --- Drift --------------------------------------------------------------------------------
DRIFT_P_VALUE = Gauge(
    "textserve_drift_p_value",
    "p-value of the latest drift test of the recent window against the reference.",
    [*_KEY, "detector"],
    registry=REGISTRY,
)
DRIFT_DETECTED = Gauge(
    "textserve_drift_detected",
    "1 when the latest drift test flagged drift (p-value below the significance), else 0.",
    [*_KEY, "detector"],
    registry=REGISTRY,
)
DRIFT_TEST_CPU = Histogram(
    "textserve_drift_test_cpu_seconds",
    "CPU time of one drift test (off the request path).",
    ["service", "detector"],
    buckets=_CPU_BUCKETS,
    registry=REGISTRY,
)

# --- Feedback and live accuracy -----------------------------------------------------------
FEEDBACK = Counter(
    "textserve_feedback_total",
    "Ground-truth feedback received, by result (joined, unknown, duplicate); "
    "model and version are empty for unknown.",
    [*_KEY, "result"],
    registry=REGISTRY,
)
FEEDBACK_CORRECT = Counter(
    "textserve_feedback_correct_total",
    "Joined feedback whose label equals the prediction (with result=joined: accuracy for A/B tests).",
    _KEY,
    registry=REGISTRY,
)
LIVE_ACCURACY = Gauge(
    "textserve_live_accuracy",
    "Accuracy over the sliding window of the latest joined (truth, prediction) pairs.",
    _KEY,
    registry=REGISTRY,
)
LIVE_RECALL = Gauge(
    "textserve_live_recall",
    "Recall of each true label over the sliding window of joined pairs.",
    [*_KEY, "label"],
    registry=REGISTRY,
)
LIVE_WINDOW = Gauge(
    "textserve_live_window_pairs",
    "Joined pairs in the live-accuracy window.",
    _KEY,
    registry=REGISTRY,
)

# --- Payload log --------------------------------------------------------------------------
PAYLOAD_RECORDS = Counter(
    "textserve_payload_log_records_total",
    "Records written to the opt-in payload log, by kind (prediction, feedback).",
    ["service", "kind"],
    registry=REGISTRY,
)

QUALITY_WRITES_DROPPED = Counter(
    "textserve_quality_writes_dropped_total",
    "Background quality writes dropped because max_pending_writes were in flight, by kind "
    "(prediction: kept for feedback; payload: payload-log records).",
    ["service", "kind"],
    registry=REGISTRY,
)


def record_classification(
    service: str, model: str, version: str, labels: Sequence[str], confidences: Sequence[float]
) -> None:
    """Counts predicted labels and observes confidences of one classified batch."""
    for label, count in Tally(labels).items():
        child(PREDICTIONS, service, model, version, label).inc(count)
    histogram = child(PREDICTION_CONFIDENCE, service, model, version)
    for confidence in confidences:
        histogram.observe(float(confidence))


def record_embeddings(
    service: str,
    model: str,
    version: str,
    norms: Iterable[float],
    token_counts: Iterable[int] = (),
) -> None:
    """Observes the pre-normalisation norm (and token count) of each embedded text."""
    norm_histogram = child(EMBEDDING_NORM, service, model, version)
    for norm in norms:
        norm_histogram.observe(float(norm))
    token_histogram = child(TEXT_TOKENS, service, model, version)
    for count in token_counts:
        token_histogram.observe(count)


def record_entities(service: str, model: str, version: str, entity_types: Iterable[str]) -> None:
    """Counts the entities of one NER batch by type (PER, LOC, ...)."""
    for entity_type, count in Tally(entity_types).items():
        child(ENTITIES, service, model, version, entity_type).inc(count)


def publish_drift(
    service: str, model: str, version: str, detector: str, p_value: float, drifted: bool, cpu_s: float
) -> None:
    """Sets the p-value and flag gauges of one detector and observes its CPU time."""
    DRIFT_P_VALUE.labels(service, model, version, detector).set(p_value)
    DRIFT_DETECTED.labels(service, model, version, detector).set(1.0 if drifted else 0.0)
    DRIFT_TEST_CPU.labels(service, detector).observe(cpu_s)


def publish_feedback(service: str, model: str, version: str, result: str, correct: bool = False) -> None:
    """Counts one feedback by result (and whether a joined one was correct)."""
    FEEDBACK.labels(service, model, version, result).inc()
    if result == "joined" and correct:
        FEEDBACK_CORRECT.labels(service, model, version).inc()


def publish_live(
    service: str, model: str, version: str, accuracy: float, recall: Mapping[str, float], pairs: int
) -> None:
    """Sets the live accuracy, per-label recall and window-size gauges of one model version."""
    LIVE_ACCURACY.labels(service, model, version).set(accuracy)
    for label, value in recall.items():
        LIVE_RECALL.labels(service, model, version, label).set(value)
    LIVE_WINDOW.labels(service, model, version).set(pairs)
