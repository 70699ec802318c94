"""Grafana dashboards: well-formed, provisioned from the chart, identical in deploy/grafana, valid PromQL."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.promql import DASHBOARD_DIR, REPO, RULES_FILE, dashboard_queries

GRAFANA_DIR = REPO / "deploy" / "grafana"
FILES = sorted(DASHBOARD_DIR.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _build_assets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_assets", REPO / "deploy" / "build_assets.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_assets", module)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no deploy/__pycache__
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


def test_the_expected_dashboards_exist() -> None:
    assert [f.name for f in FILES] == [
        "textserve-generation.json",
        "textserve-overview.json",
        "textserve-quality.json",
        "textserve-service.json",
    ]


def test_deploy_grafana_holds_the_same_files_as_the_chart() -> None:
    grafana = sorted(GRAFANA_DIR.glob("*.json"))
    assert [f.name for f in grafana] == [f.name for f in FILES]
    for chart_file, copy in zip(FILES, grafana, strict=True):
        assert chart_file.read_bytes() == copy.read_bytes(), (
            f"{copy} differs: run python deploy/build_assets.py"
        )


def test_generated_files_are_up_to_date() -> None:
    stale = _build_assets().stale_files()
    assert not stale, f"stale {stale}: run python deploy/build_assets.py"


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_dashboard_structure(path: Path) -> None:
    dashboard = _load(path)
    assert dashboard["uid"] == path.stem and len(dashboard["uid"]) <= 40
    assert dashboard["title"].startswith("textserve / ")
    assert "textserve" in dashboard["tags"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["namespace"]["allValue"] == ".*", "All must also match series without a namespace label"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], f"{panel['title']} needs a description"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}"
            assert 'namespace=~"$namespace"' in target["expr"], f"{panel['title']}: filter by namespace"


def test_required_panels_exist() -> None:
    titles = {path.stem: {p["title"] for p in _load(path)["panels"]} for path in FILES}
    assert {
        "Request rate by method",
        "Responses by status code",
        "Server error ratio",
        "Latency percentiles (OK)",
        "Batch size",
        "Queue time",
        "Queue depth and capacity",
        "Cache hit ratio",
    } <= titles["textserve-service"]
    assert {"Time to first token", "Inter-token latency", "Generated tokens per second"} <= titles[
        "textserve-generation"
    ]
    assert {
        "Request rate by service",
        "Cache hit ratio by service",
        "p99 latency by service",
        "Refused calls by service and reason",
    } <= titles["textserve-overview"]
    assert {"Refused calls by reason", "Precision in force", "Traffic share by version"} <= titles[
        "textserve-service"
    ]


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (dashboard variables set to their "All" values)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    queries = dashboard_queries()
    rules = [
        {"record": f"check:query_{index}", "expr": query.concrete()} for index, query in enumerate(queries)
    ]
    path = tmp_path / "queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_service_dashboard_shows_pods_and_resources() -> None:
    """Replicas, restarts, CPU/memory against limits, GPU (DCGM), HPA and per-pod traffic."""
    panels = {p["title"]: p for p in _load(DASHBOARD_DIR / "textserve-service.json")["panels"]}
    want = {
        "Ready vs desired replicas": [
            "kube_deployment_status_replicas_ready",
            "kube_deployment_spec_replicas",
        ],
        "HPA replicas": [
            "kube_horizontalpodautoscaler_status_current_replicas",
            "kube_horizontalpodautoscaler_spec_max_replicas",
        ],
        "Container restarts": ["kube_pod_container_status_restarts_total"],
        "CPU against limit": ["container_cpu_usage_seconds_total", "kube_pod_container_resource_limits"],
        "Memory against limit": ["container_memory_working_set_bytes", "kube_pod_container_resource_limits"],
        "GPU utilisation": ["DCGM_FI_DEV_GPU_UTIL"],
        "GPU memory used": ["DCGM_FI_DEV_FB_USED"],
        "Request rate by pod": ["sum by (pod) (rate(textserve_requests_total{"],
    }
    for title, needles in want.items():
        assert title in panels, title
        exprs = " ".join(t["expr"] for t in panels[title]["targets"])
        for needle in needles:
            assert needle in exprs, (title, needle)
        assert 'namespace=~"$namespace"' in exprs and "$release" in exprs and "$service" in exprs, title


def _threshold(panel: dict[str, Any]) -> float:
    custom = panel["fieldConfig"]["defaults"]["custom"]
    assert custom["thresholdsStyle"]["mode"] == "dashed", panel["title"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return float(steps[-1]["value"])


def test_quality_dashboard() -> None:
    """Label mix, confidence, drift, live accuracy and recall, feedback, inputs; per version."""
    from textserve.quality.config import DriftConfig

    dashboard = _load(DASHBOARD_DIR / "textserve-quality.json")
    panels = {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}
    want = {
        "Predictions per second by label": "textserve_predictions_total",
        "Label mix": "textserve_predictions_total",
        "Confidence percentiles": "textserve_prediction_confidence_bucket",
        "Confidence distribution": "textserve_prediction_confidence_bucket",
        "Drift p-value by detector": "textserve_drift_p_value",
        "Pods flagging drift": "textserve_drift_detected",
        "Live accuracy by version": "textserve_live_accuracy",
        "Live recall by class": "textserve_live_recall",
        "Feedback by result": "textserve_feedback_total",
        "Embedding norm": "textserve_embedding_norm_bucket",
        "Text length in tokens": "textserve_text_tokens_bucket",
        "Entities per second by type": "textserve_entities_total",
    }
    for title, metric in want.items():
        assert title in panels, title
        exprs = " ".join(t["expr"] for t in panels[title]["targets"])
        assert metric in exprs and 'service=~"$service"' in exprs and "$release" in exprs, title
    for panel in panels.values():
        exprs = " ".join(t["expr"] for t in panel["targets"])
        if "version" in exprs:
            assert 'version=~"$version"' in exprs and 'model=~"$model"' in exprs, panel["title"]
    assert {t["format"] for t in panels["Confidence distribution"]["targets"]} == {"heatmap"}
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"namespace", "release", "service", "model", "version"} <= set(variables)
    assert variables["service"]["includeAll"] and variables["version"]["includeAll"]
    # The dashed lines: the default significance, and the live-accuracy alert's thresholds.
    assert _threshold(panels["Drift p-value by detector"]) == DriftConfig().significance
    rules = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    accuracy = next(r["expr"] for r in rules if r.get("alert") == "TextserveLiveAccuracyLow")
    below = re.search(r"\)\s*<\s*([0-9.]+)", accuracy)
    at_least = re.search(r"textserve_live_window_pairs\)\s*>=\s*([0-9]+)", accuracy)
    assert below and at_least, accuracy
    assert _threshold(panels["Live accuracy by version"]) == float(below.group(1))
    assert _threshold(panels["Joined pairs in the window"]) == float(at_least.group(1))


def _exprs(panel: dict[str, Any]) -> str:
    return " ".join(t["expr"] for t in panel["targets"])


def test_service_dashboard_compares_model_versions() -> None:
    """$version from the per-version request counter; one row comparing the versions of $model:
    traffic share against routing weight, state, latency, errors, and the shadow's agreement,
    latency and outcomes."""
    dashboard = _load(DASHBOARD_DIR / "textserve-service.json")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    version = variables["version"]
    assert version["definition"] == (
        'label_values(textserve_model_requests_total{namespace=~"$namespace", service="$service", '
        'model=~"$model"}, version)'
    )
    assert version["includeAll"] and version["multi"] and version["allValue"] == ".*"
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert "Versions (A/B)" in [r["title"] for r in rows]
    panels = {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}
    want = {
        "Traffic share by version": ["textserve_model_requests_total"],
        "Routing weight by version": ["textserve_routing_weight"],
        "Version state": ["textserve_model_version_state"],
        "Latency by version (p50, p99)": ["textserve_model_request_duration_seconds_bucket"],
        "Server error ratio by version": ["textserve_model_requests_total", 'code=~"INTERNAL'],
        "Shadow agreement": ["textserve_shadow_agreement_sum", "textserve_shadow_agreement_bucket"],
        "Shadow latency (p50, p99)": ["textserve_shadow_latency_seconds_bucket"],
        "Shadow requests by outcome": ["textserve_shadow_requests_total", "outcome"],
    }
    for title, needles in want.items():
        exprs = _exprs(panels[title])
        for needle in needles:
            assert needle in exprs, (title, needle)
        assert 'version=~"$version"' in exprs and 'model=~"$model"' in exprs, title
        assert "by (model, version" in exprs, f"{title}: one series per version"
        assert 'service="$service"' in exprs and "$release" in exprs, title
    precision = _exprs(panels["Precision in force"])
    assert "count by (model, precision) (textserve_model_precision_info{" in precision
    # A share is of the model's whole traffic (every version), not of the selected versions.
    share = _exprs(panels["Traffic share by version"])
    numerator, denominator = share.split(" / on (model) group_left ")
    assert 'version=~"$version"' in numerator and "version" not in denominator.replace("by (model)", "")
    # The dashed line is the alert's threshold.
    rules = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    agreement = next(r["expr"] for r in rules if r.get("alert") == "TextserveShadowAgreementLow")
    below = re.search(r"\)\s*<\s*([0-9.]+)", agreement)
    assert below, agreement
    assert _threshold(panels["Shadow agreement"]) == float(below.group(1))


def test_refused_calls_are_shown_by_reason() -> None:
    """textserve_requests_refused_total (in_flight, queue_full) on the overview and service dashboards."""
    service = {p["title"]: p for p in _load(DASHBOARD_DIR / "textserve-service.json")["panels"]}
    overview = {p["title"]: p for p in _load(DASHBOARD_DIR / "textserve-overview.json")["panels"]}
    for panel, by in (
        (service["Refused calls by reason"], "method, reason"),
        (overview["Refused calls by service and reason"], "service, reason"),
    ):
        assert f"sum by ({by}) (rate(textserve_requests_refused_total{{" in _exprs(panel)
        assert panel["fieldConfig"]["defaults"]["unit"] == "reqps"
