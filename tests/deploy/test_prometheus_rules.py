"""Alerting rules: promtool check + promtool unit tests; the chart's copy is the same file."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy.promql import REPO, RULES_FILE, rule_queries

PLAIN_RULES = REPO / "deploy" / "prometheus" / "textserve.rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tests" / "textserve.rules.test.yaml"
REQUIRED_ALERTS = {
    "TextserveHighErrorRatio",
    "TextserveHighLatencyP99",
    "TextserveQueueSaturated",
    "TextserveCacheErrors",
    "TextservePodRestarting",
    "TextserveDriftDetected",
    "TextserveLiveAccuracyLow",
    "TextserveModelVersionFailed",
    "TextserveShadowAgreementLow",
}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return path


def test_plain_copy_is_identical_to_the_charts() -> None:
    assert PLAIN_RULES.read_bytes() == RULES_FILE.read_bytes(), "run python deploy/build_assets.py"


def test_required_alerts_exist_with_severity_and_text() -> None:
    rules = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule.get("for"), f"{name} should not fire on one evaluation"
    saturation = alerts["TextserveQueueSaturated"]["expr"]
    assert "textserve_queue_depth / textserve_queue_capacity" in saturation
    assert "kube_pod_container_status_restarts_total" in alerts["TextservePodRestarting"]["expr"]


def test_quality_alerts_are_per_model_version() -> None:
    """Drift per detector and version; live accuracy only with enough joined feedback."""
    rules = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    alerts = {r.get("alert"): r for r in rules}
    per_version = "by (namespace, release, service, model, version"
    drift = alerts["TextserveDriftDetected"]["expr"]
    assert f"{per_version}, detector) (textserve_drift_detected) == 1" in drift
    accuracy = " ".join(alerts["TextserveLiveAccuracyLow"]["expr"].split())
    assert f"{per_version}) (textserve_live_accuracy * textserve_live_window_pairs)" in accuracy
    assert f"{per_version}) (textserve_live_window_pairs) >= 50" in accuracy


def test_model_lifecycle_alerts_are_per_model_version() -> None:
    """A FAILED version on any pod; shadow agreement over every mirrored request, with a minimum."""
    rules = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    alerts = {r.get("alert"): r for r in rules}
    per_version = "by (namespace, release, service, model, version)"
    failed = alerts["TextserveModelVersionFailed"]["expr"]
    assert f'max {per_version} (textserve_model_version_state{{state="FAILED"}}) == 1' in failed
    shadow = " ".join(alerts["TextserveShadowAgreementLow"]["expr"].split())
    assert f"sum {per_version} (rate(textserve_shadow_agreement_sum[15m]))" in shadow
    assert f"sum {per_version} (increase(textserve_shadow_agreement_count[15m])) >= 100" in shadow


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    assert {q.title for q in rule_queries()} <= tested


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(PLAIN_RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
