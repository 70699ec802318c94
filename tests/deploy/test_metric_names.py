"""Every metric the dashboards and alert rules query is one textserve exports (core/, quality/metrics.py)."""

from __future__ import annotations

import re

import pytest

from tests.deploy.promql import (
    TARGET_LABELS,
    Query,
    dashboard_queries,
    exported_series,
    grouping_labels,
    metric_names,
    rule_queries,
    selector_labels,
)

QUERIES = dashboard_queries() + rule_queries()
IDS = [f"{q.source}:{q.title}" for q in QUERIES]
_POD = {"namespace", "pod", "container"}
_DCGM = _POD | {"gpu", "UUID", "modelName", "Hostname", "device"}
# Not ours, and allowed, with the labels their exporters give them: kube-state-metrics
# (restarts, readiness, replicas, limits; filtered to textserve containers and objects),
# cAdvisor (CPU and memory use) and NVIDIA's DCGM exporter (GPU use, when it runs).
FOREIGN_SERIES = {
    "kube_pod_container_status_restarts_total": _POD,
    "kube_pod_container_status_ready": _POD,
    "kube_pod_container_resource_limits": _POD | {"resource", "unit"},
    "kube_deployment_spec_replicas": {"namespace", "deployment"},
    "kube_deployment_status_replicas_ready": {"namespace", "deployment"},
    "kube_horizontalpodautoscaler_status_current_replicas": {"namespace", "horizontalpodautoscaler"},
    "kube_horizontalpodautoscaler_status_desired_replicas": {"namespace", "horizontalpodautoscaler"},
    "kube_horizontalpodautoscaler_spec_max_replicas": {"namespace", "horizontalpodautoscaler"},
    "container_cpu_usage_seconds_total": _POD,
    "container_memory_working_set_bytes": _POD,
    "DCGM_FI_DEV_GPU_UTIL": _DCGM,
    "DCGM_FI_DEV_FB_USED": _DCGM,
    "DCGM_FI_DEV_FB_FREE": _DCGM,
}
_FOREIGN_SELECTOR = re.compile(r"\b(" + "|".join(FOREIGN_SERIES) + r")\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def _foreign(expr: str) -> set[str]:
    return {name for name in FOREIGN_SERIES if re.search(rf"\b{name}\b", expr)}


def test_queries_were_found() -> None:
    sources = {q.source for q in QUERIES}
    assert {
        "textserve-overview.json",
        "textserve-service.json",
        "textserve-generation.json",
        "textserve-quality.json",
    } <= sources
    assert "textserve.rules.yaml" in sources
    assert len(QUERIES) > 80


@pytest.mark.parametrize("query", QUERIES, ids=IDS)
def test_only_exported_metrics_are_queried(query: Query) -> None:
    exported = exported_series()
    names = metric_names(query.expr)
    assert names or _foreign(query.expr), f"no textserve (or allowed foreign) metric in {query.expr}"
    unknown = sorted(name for name in names if name not in exported)
    assert not unknown, f"{query.title}: {unknown} are not defined in textserve/(core|quality)/metrics.py"


@pytest.mark.parametrize("query", QUERIES, ids=IDS)
def test_only_existing_labels_are_used(query: Query) -> None:
    exported = {**exported_series(), **FOREIGN_SERIES}
    for name, labels in selector_labels(query.expr).items():
        unknown = labels - exported[name] - TARGET_LABELS
        assert not unknown, f"{query.title}: {name} has no label {sorted(unknown)}"
    known = set().union(*(exported[name] for name in metric_names(query.expr) if name in exported))
    for name in _foreign(query.expr):
        known |= FOREIGN_SERIES[name]
    for name, body in _FOREIGN_SELECTOR.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', query.expr)):
        unknown = set(_MATCHER_LABEL.findall(body)) - FOREIGN_SERIES[name] - (TARGET_LABELS - {"release"})
        assert not unknown, f"{query.title}: {name} has no label {sorted(unknown)}"
    unknown = grouping_labels(query.expr) - known - TARGET_LABELS
    assert not unknown, f"{query.title}: grouping by {sorted(unknown)}, which its metrics do not carry"


def test_gateway_is_only_queried_through_requests_total() -> None:
    """Gateway metrics are still being defined; only textserve_requests_total{service="gateway"} is safe."""
    for query in QUERIES:
        if 'service="gateway"' in query.expr:
            assert metric_names(query.expr) == {"textserve_requests_total"}, query.title


def test_helpers_parse_promql() -> None:
    expr = (
        "sum by (service, le) "
        '(rate(textserve_request_duration_seconds_bucket{service="a", code=~"OK|x"}[5m]))'
        ' / on (service) group_left sum(textserve_queue_depth{model!="textserve_fake"})'
    )
    assert metric_names(expr) == {"textserve_request_duration_seconds_bucket", "textserve_queue_depth"}
    assert selector_labels(expr) == {
        "textserve_request_duration_seconds_bucket": {"service", "code"},
        "textserve_queue_depth": {"model"},
    }
    assert grouping_labels(expr) == {"service", "le"}
    several = 'count({__name__=~"textserve_predictions_total|textserve_text_tokens_count", x="m"})'
    assert metric_names(several) == {"textserve_predictions_total", "textserve_text_tokens_count"}
    assert selector_labels(several) == {
        "textserve_predictions_total": {"x"},
        "textserve_text_tokens_count": {"x"},
    }


def test_quality_metrics_are_exported_series() -> None:
    """quality/metrics.py's metrics are on the same registry and count as textserve's."""
    exported = exported_series()
    assert exported["textserve_drift_p_value"] == {"service", "model", "version", "detector"}
    assert exported["textserve_feedback_total"] == {"service", "model", "version", "result"}
    assert exported["textserve_prediction_confidence_bucket"] == {"service", "model", "version", "le"}
    assert "textserve_requests_total" in exported
