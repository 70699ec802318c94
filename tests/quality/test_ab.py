"""A/B verdicts: the z-test against hand-checked numbers and scipy, and both ways of reading the counts."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
from prometheus_client import generate_latest
from scipy.stats import chi2_contingency, norm
from textserve.core.metrics import REGISTRY
from textserve.quality.ab import (
    VersionStats,
    ab_report,
    prometheus_queries,
    stats_from_metrics_text,
    stats_from_prometheus,
    two_proportion_ztest,
)
from textserve.quality.metrics import publish_feedback, record_classification


def test_ztest_matches_hand_computation_and_chi_square() -> None:
    # A: 420/500 = 0.84, B: 450/500 = 0.90. Pooled p = 0.87,
    # se = sqrt(0.87 * 0.13 * (1/500 + 1/500)) = 0.0212697, z = 0.06 / se = 2.82091,
    # p = 2 * (1 - Phi(2.82091)) = 0.004789.
    test = two_proportion_ztest(420, 500, 450, 500)
    assert test.difference == pytest.approx(0.06)
    assert test.z == pytest.approx(2.82091, abs=1e-5)
    assert test.p_value == pytest.approx(0.004789, abs=1e-6)
    assert test.p_value == pytest.approx(2 * norm.sf(0.06 / math.sqrt(0.87 * 0.13 * 2 / 500)))
    # The same test is Pearson's chi-square on the 2 x 2 table without continuity correction.
    chi2 = chi2_contingency(np.array([[420, 80], [450, 50]]), correction=False)
    assert test.z**2 == pytest.approx(chi2.statistic)
    assert test.p_value == pytest.approx(chi2.pvalue)
    # Unpooled 95 % interval: 0.06 +- 1.95996 * sqrt(.84*.16/500 + .9*.1/500) = 0.06 +- 0.041524.
    assert test.ci_low == pytest.approx(0.018476, abs=1e-5)
    assert test.ci_high == pytest.approx(0.101524, abs=1e-5)


def test_ztest_is_symmetric_and_handles_degenerate_samples() -> None:
    forward, backward = two_proportion_ztest(30, 100, 45, 120), two_proportion_ztest(45, 120, 30, 100)
    assert forward.z == pytest.approx(-backward.z)
    assert forward.p_value == pytest.approx(backward.p_value)
    assert two_proportion_ztest(100, 100, 50, 50).p_value == 1.0
    with pytest.raises(ValueError):
        two_proportion_ztest(1, 0, 1, 10)
    with pytest.raises(ValueError):
        two_proportion_ztest(11, 10, 1, 10)


def test_verdicts() -> None:
    better = ab_report(VersionStats("v1", 500, 420, 900), VersionStats("v2", 500, 450, 100), model="sst2")
    assert better.test is not None and better.test.p_value < 0.05
    assert better.verdict.startswith("v2 is more accurate than v1")
    text = better.format()
    assert "v1" in text and "90.0%" in text and "10.0%" in text and "p = 0.004789" in text

    worse = ab_report(VersionStats("v1", 500, 450), VersionStats("v2", 500, 420))
    assert worse.verdict.startswith("v1 is more accurate than v2")
    same = ab_report(VersionStats("v1", 200, 170), VersionStats("v2", 200, 172))
    assert same.verdict.startswith("no significant difference")
    few = ab_report(VersionStats("v1", 10, 9), VersionStats("v2", 500, 400))
    assert few.test is None and few.verdict.startswith("not enough feedback")


def test_counts_from_a_real_metrics_scrape() -> None:
    model = f"ab-{uuid.uuid4().hex[:6]}"
    for version, joined, correct, served in (("v1", 40, 30, 300), ("v2", 50, 45, 100)):
        record_classification(
            "classifier", model, version, ["pos"] * (served - 10) + ["neg"] * 10, [0.9] * served
        )
        for number in range(joined):
            publish_feedback("classifier", model, version, "joined", correct=number < correct)
        publish_feedback("classifier", model, version, "duplicate")
    publish_feedback("classifier", "", "", "unknown")
    stats = stats_from_metrics_text(generate_latest(REGISTRY).decode(), model=model)
    assert stats == {
        "v1": VersionStats("v1", 40.0, 30.0, 300.0),
        "v2": VersionStats("v2", 50.0, 45.0, 100.0),
    }
    assert stats_from_metrics_text(generate_latest(REGISTRY).decode(), model=model, service="embedding") == {}


def test_counts_from_prometheus_http_api_answers() -> None:
    queries = prometheus_queries('my "model"', window="6h")
    assert queries["joined"] == (
        'sum by (version) (increase(textserve_feedback_total{model="my \\"model\\"",result="joined"}[6h]))'
    )

    def vector(values: dict[str, str]) -> dict[str, object]:
        result = [{"metric": {"version": v}, "value": [1_700_000_000.0, x]} for v, x in values.items()]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    stats = stats_from_prometheus(
        {
            "joined": vector({"v1": "500", "v2": "499.99999"}),
            "correct": vector({"v1": "420", "v2": "450"}),
            "predictions": vector({"v1": "9000", "v2": "1000"}),
        }
    )
    assert stats["v1"] == VersionStats("v1", 500.0, 420.0, 9000.0)
    assert stats["v2"].accuracy == pytest.approx(0.9)
    with pytest.raises(ValueError, match="failed"):
        stats_from_prometheus({"joined": {"status": "error", "error": "bad"}, "correct": vector({})})
