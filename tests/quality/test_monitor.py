"""DriftMonitor scheduling (windows, intervals, capture, one run in flight), references and metric writers."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from textserve.core.metrics import REGISTRY
from textserve.quality.config import DriftConfig
from textserve.quality.drift import CONFIDENCE, LABEL_MIX, MMD, DriftResult, LabelMixDrift
from textserve.quality.metrics import record_classification, record_embeddings, record_entities
from textserve.quality.monitor import DriftMonitor, ModelKey, metrics_hook
from textserve.quality.reference import Reference, build_reference, load_reference, save_reference

KEY = ModelKey("m", "1")


def vectors(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32) + shift


class Results:
    """A hook that keeps every result."""

    def __init__(self) -> None:
        self.items: list[tuple[ModelKey, DriftResult, float]] = []

    def __call__(self, key: ModelKey, result: DriftResult, cpu_s: float) -> None:
        self.items.append((key, result, cpu_s))


def make(results: Results, **overrides: object) -> DriftMonitor:
    settings: dict[str, object] = {"enabled": True, "window_size": 20, "test_every_n": 10, "test_every_s": 0}
    settings.update(overrides)
    return DriftMonitor(DriftConfig.model_validate(settings), hooks=[results])


def test_disabled_monitor_keeps_nothing() -> None:
    results = Results()
    monitor = DriftMonitor(DriftConfig(), hooks=[results])
    monitor.set_reference(KEY, Reference(vectors=vectors(50, 0)))
    monitor.observe_embeddings(KEY, vectors(500, 1))
    monitor.observe_outputs(KEY, ["a"] * 500, [0.9] * 500)
    assert monitor.wait_idle(1) and results.items == [] and monitor.latest(KEY) == {}
    monitor.close()


def test_tests_run_once_the_window_is_full_then_every_n_inputs() -> None:
    results = Results()
    monitor = make(results)
    monitor.set_reference(KEY, Reference(vectors=vectors(50, 0)))
    try:
        monitor.observe_embeddings(KEY, vectors(15, 1))
        assert monitor.wait_idle(10) and results.items == []  # window not full
        monitor.observe_embeddings(KEY, vectors(5, 2))
        assert monitor.wait_idle(10) and len(results.items) == 1
        monitor.observe_embeddings(KEY, vectors(9, 3))
        assert monitor.wait_idle(10) and len(results.items) == 1  # 9 < test_every_n
        monitor.observe_embeddings(KEY, vectors(1, 4))
        assert monitor.wait_idle(10) and len(results.items) == 2
        key, result, cpu_s = results.items[-1]
        assert key == KEY and result.detector == MMD and result.window_size == 20 and cpu_s >= 0
        assert monitor.latest(KEY) == {MMD: result}
    finally:
        monitor.close()


def test_time_interval_triggers_a_test_without_enough_new_inputs() -> None:
    now = [100.0]
    results = Results()
    config = DriftConfig(enabled=True, window_size=20, test_every_n=1000, test_every_s=10)
    monitor = DriftMonitor(config, hooks=[results], clock=lambda: now[0])
    monitor.set_reference(KEY, Reference(vectors=vectors(50, 0)))
    try:
        monitor.observe_embeddings(KEY, vectors(20, 1))
        assert monitor.wait_idle(10) and len(results.items) == 1
        now[0] = 105.0
        monitor.observe_embeddings(KEY, vectors(1, 2))
        assert monitor.wait_idle(10) and len(results.items) == 1
        now[0] = 110.5
        monitor.observe_embeddings(KEY, vectors(1, 3))
        assert monitor.wait_idle(10) and len(results.items) == 2
    finally:
        monitor.close()


def test_first_inputs_of_a_version_become_its_reference() -> None:
    results = Results()
    monitor = make(results, capture_reference=40, window_size=30, test_every_n=30)
    try:
        monitor.observe_embeddings(KEY, vectors(40, 0))  # captured, not tested
        assert monitor.wait_idle(10) and results.items == []
        monitor.observe_embeddings(KEY, vectors(30, 1))  # same distribution
        assert monitor.wait_idle(10)
        monitor.observe_embeddings(KEY, vectors(30, 2, shift=3.0))  # far away
        assert monitor.wait_idle(10)
        assert not results.items[0][1].drifted
        assert [r.reference_size for _, r, _ in results.items] == [40, 40]
        assert results.items[-1][1].drifted
        other = ModelKey("m", "2")  # a new version captures its own reference
        monitor.observe_embeddings(other, vectors(40, 5, shift=3.0))
        assert monitor.wait_idle(10)
        monitor.observe_embeddings(other, vectors(30, 6, shift=3.0))
        assert monitor.wait_idle(10)
        assert results.items[-1][0] == other and not results.items[-1][1].drifted
    finally:
        monitor.close()


def test_at_most_one_run_in_flight_and_the_request_path_never_waits() -> None:
    release = threading.Event()
    started = threading.Event()
    results = Results()

    def blocking(key: ModelKey, result: DriftResult, cpu_s: float) -> None:
        started.set()
        release.wait(10)

    monitor = make(results)
    monitor.add_hook(blocking)
    monitor.set_reference(KEY, Reference(vectors=vectors(50, 0)))
    try:
        monitor.observe_embeddings(KEY, vectors(20, 1))
        assert started.wait(10)
        for seed in range(2, 12):  # each would be due; none is queued while one runs
            monitor.observe_embeddings(KEY, vectors(20, seed))
        assert not monitor.wait_idle(0.2)
        release.set()
        assert monitor.wait_idle(10) and len(results.items) == 1
        monitor.observe_embeddings(KEY, vectors(1, 99))  # due again (many new inputs)
        assert monitor.wait_idle(10) and len(results.items) == 2
    finally:
        release.set()
        monitor.close()


def test_a_failing_hook_is_logged_and_later_tests_still_run(caplog: pytest.LogCaptureFixture) -> None:
    results = Results()

    def broken(key: ModelKey, result: DriftResult, cpu_s: float) -> None:
        raise RuntimeError("sink down")

    monitor = DriftMonitor(
        DriftConfig(enabled=True, window_size=20, test_every_n=20, test_every_s=0), hooks=[broken, results]
    )
    monitor.set_reference(KEY, Reference(vectors=vectors(50, 0)))
    try:
        monitor.observe_embeddings(KEY, vectors(20, 1))
        assert monitor.wait_idle(10)
        monitor.observe_embeddings(KEY, vectors(20, 2))
        assert monitor.wait_idle(10)
        assert "drift test of m/1 (embeddings) failed" in caplog.text
        assert len(monitor.latest(KEY)) == 1
    finally:
        monitor.close()


def test_outputs_and_metrics_hook_export_gauges() -> None:
    model = f"clf-{uuid.uuid4().hex[:6]}"
    key = ModelKey(model, "7")
    monitor = DriftMonitor(
        DriftConfig(enabled=True, window_size=100, test_every_n=100, test_every_s=0),
        hooks=[metrics_hook("classifier")],
    )
    labels = ["pos", "neg"] * 100
    monitor.set_reference(key, Reference(labels=tuple(labels), confidences=np.linspace(0.5, 1.0, 200)))
    try:
        monitor.observe_outputs(key, ["pos"] * 90 + ["neg"] * 10, [0.99] * 100)
        assert monitor.wait_idle(10)
    finally:
        monitor.close()
    for detector in (LABEL_MIX, CONFIDENCE):
        labels_ = {"service": "classifier", "model": model, "version": "7", "detector": detector}
        assert REGISTRY.get_sample_value("textserve_drift_detected", labels_) == 1.0
        p_value = REGISTRY.get_sample_value("textserve_drift_p_value", labels_)
        assert p_value is not None and p_value < 1e-6
        assert monitor.latest(key)[detector].p_value == p_value
    count = REGISTRY.get_sample_value(
        "textserve_drift_test_cpu_seconds_count", {"service": "classifier", "detector": LABEL_MIX}
    )
    assert count is not None and count >= 1


def test_reference_file_round_trip_and_use(tmp_path: Path) -> None:
    def embed(texts: list[str]) -> np.ndarray:
        return np.array([[len(text), text.count("a"), 1.0] for text in texts], dtype=np.float32)

    def classify(texts: list[str]) -> tuple[list[str], list[float]]:
        return ["long" if len(t) > 5 else "short" for t in texts], [0.5 + len(t) / 100 for t in texts]

    texts = [f"text {'a' * i}" for i in range(30)]
    reference = build_reference(texts, embed=embed, classify=classify, batch_size=7)
    assert reference.vectors is not None and reference.vectors.shape == (30, 3)
    path = tmp_path / "reference.npz"
    save_reference(path, reference)
    loaded = load_reference(path)
    assert np.array_equal(loaded.vectors, reference.vectors)
    assert loaded.labels == reference.labels and np.array_equal(loaded.confidences, reference.confidences)

    results = Results()
    monitor = make(results, reference_file=path)
    try:
        monitor.observe_outputs(ModelKey("any", "v"), ["short"] * 20, [0.6] * 20)
        assert monitor.wait_idle(10)
        assert {r.detector for _, r, _ in results.items} == {LABEL_MIX, CONFIDENCE}
    finally:
        monitor.close()
    with pytest.raises(ValueError, match="labels and confidences"):
        Reference(labels=("a",))
    with pytest.raises(ValueError):
        LabelMixDrift([])


def test_prediction_statistics_metrics() -> None:
    model = f"stats-{uuid.uuid4().hex[:6]}"
    record_classification("classifier", model, "1", ["pos", "pos", "neg"], [0.9, 0.95, 0.55])
    record_embeddings("embedding", model, "1", [3.2, 4.1], token_counts=[12, 40])
    record_entities("classifier", model, "1", ["PER", "LOC", "PER"])
    key = {"model": model, "version": "1"}
    value = REGISTRY.get_sample_value
    assert value("textserve_predictions_total", {"service": "classifier", **key, "label": "pos"}) == 2
    assert value("textserve_prediction_confidence_count", {"service": "classifier", **key}) == 3
    assert value("textserve_prediction_confidence_bucket", {"service": "classifier", **key, "le": "0.6"}) == 1
    assert value("textserve_embedding_norm_sum", {"service": "embedding", **key}) == pytest.approx(7.3)
    assert value("textserve_text_tokens_count", {"service": "embedding", **key}) == 2
    assert value("textserve_entities_total", {"service": "classifier", **key, "entity_type": "PER"}) == 2
