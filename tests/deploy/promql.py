"""Helpers over the PromQL in deploy/: the queries, the textserve_* names and labels they use."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "textserve"
DASHBOARD_DIR = CHART_DIR / "dashboards"
RULES_FILE = CHART_DIR / "rules" / "textserve.rules.yaml"

# Labels Prometheus or the Prometheus Operator attach to every scraped series, and `release`
# (app.kubernetes.io/instance), which the chart's ServiceMonitors add by relabeling.
TARGET_LABELS = frozenset({"namespace", "pod", "instance", "job", "container", "endpoint", "release"})
# Values the dashboard variables take when every option is selected, plus a fixed service.
VARIABLES = {
    "$__rate_interval": "1m",
    "$namespace": ".*",
    "$model": ".*",
    "$service": "embedding",
    "$release": ".*",
    "${datasource}": "prometheus",
}

_NAME = re.compile(r"\btextserve_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\b(textserve_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class Query:
    """One PromQL expression from a dashboard panel or an alert."""

    source: str
    title: str
    expr: str
    target: str = ""
    """Which query of the panel (its legend), for messages."""

    def concrete(self) -> str:
        """The expression with dashboard variables replaced by their "All" values."""
        expr = self.expr
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"{self.source} {self.title}: unknown variable in {expr}"
        return expr


def dashboard_queries() -> list[Query]:
    """Every target expression of every dashboard, plus the variable queries."""
    queries = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queries.append(
                    Query(path.name, panel["title"], target["expr"], target.get("legendFormat", ""))
                )
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
                assert inner, variable["definition"]
                queries.append(Query(path.name, f"variable {variable['name']}", inner.group(1)))
    return queries


def rule_queries(path: Path = RULES_FILE) -> list[Query]:
    """Every alert expression of a rules file."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return [
        Query(path.name, rule.get("alert") or rule.get("record"), rule["expr"])
        for group in groups
        for rule in group["rules"]
    ]


def metric_names(expr: str) -> set[str]:
    """textserve_* series names an expression reads."""
    return set(_NAME.findall(_STRING.sub('""', expr)))


def selector_labels(expr: str) -> dict[str, set[str]]:
    """series name -> label names used in its {...} matchers."""
    found: dict[str, set[str]] = {}
    for name, body in _SELECTOR.findall(expr):
        labels = set(_MATCHER_LABEL.findall(_STRING.sub('""', body)))
        found.setdefault(name, set()).update(labels)
    return found


def grouping_labels(expr: str) -> set[str]:
    """Label names in by(...)/without(...)/on(...) clauses."""
    labels: set[str] = set()
    for body in _GROUPING.findall(expr):
        labels.update(part.strip() for part in body.split(",") if part.strip())
    return labels


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, for every series textserve can export (core.metrics, and
    quality.metrics on the same registry).

    Counters export <name>_total, histograms <name>_bucket (with `le`), _sum and _count,
    gauges <name>; prometheus_client also adds <name>_created for counters and histograms.
    """
    from prometheus_client.metrics import MetricWrapperBase
    from textserve.core import metrics
    from textserve.quality import metrics as quality_metrics

    series: dict[str, set[str]] = {}
    every = [*vars(metrics).values(), *vars(quality_metrics).values()]
    for metric in every:
        if not isinstance(metric, MetricWrapperBase):
            continue
        # prometheus_client keeps these as attributes only; the names are what it exports.
        name, kind, labels = metric._name, metric._type, set(metric._labelnames)
        if kind == "counter":
            series[f"{name}_total"] = labels
            series[f"{name}_created"] = labels
        elif kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            for suffix in ("_sum", "_count", "_created"):
                series[f"{name}{suffix}"] = labels
        else:
            series[name] = labels
    return series
