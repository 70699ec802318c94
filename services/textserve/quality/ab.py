"""A/B verdicts: is one model version's live accuracy really different from another's?

The data are per-version counts of joined feedback and of correct joined feedback
(`textserve_feedback_total{result="joined"}`, `textserve_feedback_correct_total`) and of
predictions (`textserve_predictions_total`, for the traffic share), read either from a
service's /metrics text (`stats_from_metrics_text`) or from a Prometheus server's
HTTP API (`prometheus_queries` gives the PromQL, `stats_from_prometheus` reads the
answers). The test is the two-sided two-proportion z-test with a pooled standard error,
written out with `scipy.stats.norm` (statsmodels' `proportions_ztest` is the same test;
statsmodels is not a dependency); it equals Pearson's chi-square test on the 2 x 2 table
without continuity correction (z^2 = chi^2). `ab_report` adds a plain verdict and
`ABReport.format` prints it (for `textserve ab-report`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import norm


@dataclass(frozen=True)
class VersionStats:
    """Feedback and traffic counts of one model version."""

    version: str
    joined: float
    """Joined feedback pairs."""
    correct: float
    """Joined pairs whose prediction was right."""
    predictions: float = 0.0
    """Texts classified (traffic)."""

    @property
    def accuracy(self) -> float:
        """correct / joined (nan without feedback)."""
        return self.correct / self.joined if self.joined > 0 else math.nan


@dataclass(frozen=True)
class TwoProportionTest:
    """Two-sided z-test of p_b - p_a = 0."""

    difference: float
    """Accuracy of B minus accuracy of A."""
    z: float
    p_value: float
    ci_low: float
    """95 % Wald interval of the difference (unpooled), lower end."""
    ci_high: float


def two_proportion_ztest(correct_a: float, n_a: float, correct_b: float, n_b: float) -> TwoProportionTest:
    """Pooled two-proportion z-test; z > 0 when B's proportion is higher."""
    if n_a <= 0 or n_b <= 0:
        raise ValueError(f"both samples need observations, got n_a={n_a}, n_b={n_b}")
    if not (0 <= correct_a <= n_a and 0 <= correct_b <= n_b):
        raise ValueError(f"successes must be within [0, n]: {correct_a}/{n_a}, {correct_b}/{n_b}")
    p_a, p_b = correct_a / n_a, correct_b / n_b
    pooled = (correct_a + correct_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    difference = p_b - p_a
    if se == 0.0:
        z, p_value = 0.0, 1.0
    else:
        z = difference / se
        p_value = float(2.0 * norm.sf(abs(z)))
    se_unpooled = math.sqrt(p_a * (1.0 - p_a) / n_a + p_b * (1.0 - p_b) / n_b)
    half = float(norm.ppf(0.975)) * se_unpooled
    return TwoProportionTest(difference, z, p_value, difference - half, difference + half)


@dataclass(frozen=True)
class ABReport:
    """Two versions side by side, the test, and a plain verdict."""

    model: str
    a: VersionStats
    b: VersionStats
    test: TwoProportionTest | None
    """None when either version has too little feedback."""
    significance: float
    verdict: str

    def traffic_share(self, stats: VersionStats) -> float:
        """Share of the two versions' predictions served by `stats`' version (nan without traffic)."""
        total = self.a.predictions + self.b.predictions
        return stats.predictions / total if total > 0 else math.nan

    def format(self) -> str:
        """The report as plain text."""
        lines = [f"model {self.model or '(all)'}: A = {self.a.version}, B = {self.b.version}"]
        lines.append(f"{'version':<16}{'accuracy':>10}{'feedback':>10}{'traffic':>10}")
        for stats in (self.a, self.b):
            lines.append(
                f"{stats.version:<16}{stats.accuracy:>10.4f}{stats.joined:>10.0f}{self.traffic_share(stats):>10.1%}"
            )
        if self.test is not None:
            t = self.test
            lines.append(
                f"difference B - A = {t.difference:+.4f} (95 % CI {t.ci_low:+.4f} .. {t.ci_high:+.4f}), "
                f"z = {t.z:.3f}, p = {t.p_value:.4g}"
            )
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


def ab_report(
    a: VersionStats, b: VersionStats, *, model: str = "", significance: float = 0.05, min_feedback: int = 30
) -> ABReport:
    """Tests B against A and words the verdict."""
    if min(a.joined, b.joined) < min_feedback:
        verdict = (
            f"not enough feedback: {a.version} has {a.joined:.0f}, {b.version} has {b.joined:.0f} "
            f"joined pairs (at least {min_feedback} each are needed)"
        )
        return ABReport(model, a, b, None, significance, verdict)
    test = two_proportion_ztest(a.correct, a.joined, b.correct, b.joined)
    if test.p_value < significance:
        better, worse = (b, a) if test.difference > 0 else (a, b)
        verdict = (
            f"{better.version} is more accurate than {worse.version} "
            f"({better.accuracy:.4f} vs {worse.accuracy:.4f}, p = {test.p_value:.4g} < {significance})"
        )
    else:
        verdict = (
            f"no significant difference between {a.version} and {b.version} "
            f"(p = {test.p_value:.4g} >= {significance}); keep collecting feedback or keep {a.version}"
        )
    return ABReport(model, a, b, test, significance, verdict)


def _collect(
    joined: Mapping[str, float], correct: Mapping[str, float], predictions: Mapping[str, float]
) -> dict[str, VersionStats]:
    versions = sorted(set(joined) | set(correct) | set(predictions))
    return {
        version: VersionStats(
            version, joined.get(version, 0.0), correct.get(version, 0.0), predictions.get(version, 0.0)
        )
        for version in versions
    }


def stats_from_metrics_text(text: str, *, model: str, service: str | None = None) -> dict[str, VersionStats]:
    """Per-version counts of `model` from a /metrics scrape (text exposition format)."""
    joined: dict[str, float] = {}
    correct: dict[str, float] = {}
    predictions: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or (service is not None and labels.get("service") != service):
                continue
            version = labels.get("version", "")
            if sample.name == "textserve_feedback_total" and labels.get("result") == "joined":
                joined[version] = joined.get(version, 0.0) + sample.value
            elif sample.name == "textserve_feedback_correct_total":
                correct[version] = correct.get(version, 0.0) + sample.value
            elif sample.name == "textserve_predictions_total":
                predictions[version] = predictions.get(version, 0.0) + sample.value
    return _collect(joined, correct, predictions)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def prometheus_queries(model: str, window: str = "1d") -> dict[str, str]:
    """PromQL instant queries (joined, correct, predictions per version over `window`) for `model`."""
    selector = f"model={_quote(model)}"

    def per_version(metric: str, extra: str = "") -> str:
        return f"sum by (version) (increase({metric}{{{selector}{extra}}}[{window}]))"

    return {
        "joined": per_version("textserve_feedback_total", ',result="joined"'),
        "correct": per_version("textserve_feedback_correct_total"),
        "predictions": per_version("textserve_predictions_total"),
    }


def _vector(response: Mapping[str, Any], name: str) -> dict[str, float]:
    if response.get("status") != "success":
        raise ValueError(f"Prometheus query {name!r} failed: {response.get('error', response)}")
    data = response.get("data", {})
    if data.get("resultType") != "vector":
        raise ValueError(f"Prometheus query {name!r} returned {data.get('resultType')!r}, not a vector")
    values: dict[str, float] = {}
    for item in data.get("result", []):
        version = item.get("metric", {}).get("version", "")
        values[version] = values.get(version, 0.0) + float(item["value"][1])
    return values


def stats_from_prometheus(responses: Mapping[str, Mapping[str, Any]]) -> dict[str, VersionStats]:
    """Per-version counts from the /api/v1/query answers to `prometheus_queries` (same keys)."""
    return _collect(
        _vector(responses["joined"], "joined"),
        _vector(responses["correct"], "correct"),
        _vector(responses["predictions"], "predictions") if "predictions" in responses else {},
    )
