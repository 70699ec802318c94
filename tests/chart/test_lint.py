"""`helm lint --strict` (Helm's own linter, through helm-python-sdk) on every values set, and packaging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
from helm_python.chart import Chart

from tests.chart.conftest import CHART_DIR, KUBE_VERSIONS, RELEASE, Scenario, chart, documents

INFO = 1


def _findings(values: dict[str, Any], kube_version: str) -> list[str]:
    report = helm_python.lint(CHART_DIR, values, strict=True, kube_version=f"v{kube_version}")
    # Info-level findings ("icon is recommended") are advice, not problems.
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] > INFO] + report[
        "errors"
    ]


def test_lint_is_clean(scenario: Scenario) -> None:
    for kube_version in KUBE_VERSIONS:
        assert _findings(scenario.values(), kube_version) == []


def test_lint_reports_a_typo() -> None:
    findings = _findings({"services": {"embedding": {"replcas": 2}}}, KUBE_VERSIONS[-1])
    assert any("'replcas' not allowed" in finding for finding in findings)


def test_manifests_are_validated_on_the_oldest_supported_kubernetes() -> None:
    """Chart.yaml's kubeVersion floor is the oldest version test_render validates against."""
    assert chart().metadata["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"


def test_packaged_chart_renders_like_the_directory(tmp_path: Path) -> None:
    """`helm package` keeps the dashboards, rules and scripts the templates read."""
    archive = helm_python.package(CHART_DIR, destination=tmp_path)
    values = Scenario("ci-cpu", ("ci/cpu-values.yaml",)).values()
    with Chart.load(archive) as packaged:
        from_archive = documents(packaged.render(values, name=RELEASE))
    assert from_archive == documents(chart().render(values, name=RELEASE))
    assert any(doc["kind"] == "PrometheusRule" and doc["spec"]["groups"] for doc in from_archive)
