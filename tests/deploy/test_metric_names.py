"""Every metric the dashboards and alert rules query is one textserve exports (core/metrics.py)."""

from __future__ import annotations

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
# Not ours, and allowed: kube-state-metrics, for restarts (the rule filters container=~"textserve-.+").
FOREIGN_SERIES = {"kube_pod_container_status_restarts_total": {"namespace", "pod", "container"}}


def test_queries_were_found() -> None:
    sources = {q.source for q in QUERIES}
    assert {"textserve-overview.json", "textserve-service.json", "textserve-generation.json"} <= sources
    assert "textserve.rules.yaml" in sources
    assert len(QUERIES) > 60


@pytest.mark.parametrize("query", QUERIES, ids=IDS)
def test_only_exported_metrics_are_queried(query: Query) -> None:
    exported = exported_series()
    names = metric_names(query.expr)
    assert names or "kube_pod_container_status_restarts_total" in query.expr, (
        f"no textserve metric in {query.expr}"
    )
    unknown = sorted(name for name in names if name not in exported)
    assert not unknown, f"{query.title}: {unknown} are not defined in textserve/core/metrics.py"


@pytest.mark.parametrize("query", QUERIES, ids=IDS)
def test_only_existing_labels_are_used(query: Query) -> None:
    exported = {**exported_series(), **FOREIGN_SERIES}
    for name, labels in selector_labels(query.expr).items():
        unknown = labels - exported[name] - TARGET_LABELS
        assert not unknown, f"{query.title}: {name} has no label {sorted(unknown)}"
    known = set().union(*(exported[name] for name in metric_names(query.expr) if name in exported))
    known |= {"namespace", "pod", "container"} if "kube_pod" in query.expr else set()
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
