"""Monitoring objects of the chart: ServiceMonitors, the PrometheusRule and the dashboard ConfigMaps."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART_DIR,
    NAMESPACE,
    Scenario,
    component_of,
    documents,
    enabled_components,
    of_kind,
    render,
    scenario_docs,
)

ALL_ON = Scenario("ci-cpu", ("ci/cpu-values.yaml",))
SERVICE_MONITOR_KEYS = {"selector", "namespaceSelector", "endpoints"}
ENDPOINT_KEYS = {
    "port",
    "path",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "relabelings",
    "metricRelabelings",
}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return path


def test_monitoring_objects_are_off_by_default() -> None:
    docs = scenario_docs(Scenario("default"))
    assert not of_kind(docs, "ServiceMonitor") and not of_kind(docs, "PrometheusRule")
    assert not [d for d in of_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]


def test_service_monitors_scrape_each_service_once_keeping_its_labels() -> None:
    docs = scenario_docs(ALL_ON)
    monitors = of_kind(docs, "ServiceMonitor")
    assert sorted(component_of(m) for m in monitors) == sorted(enabled_components(ALL_ON))
    services = of_kind(docs, "Service")
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        spec = monitor["spec"]
        assert set(spec) == SERVICE_MONITOR_KEYS
        (endpoint,) = spec["endpoints"]
        assert set(endpoint) <= ENDPOINT_KEYS
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        assert endpoint["honorLabels"] is True, "keep textserve's own `service` label"
        selector = spec["selector"]
        selected = [
            s
            for s in services
            if all(s["metadata"]["labels"].get(k) == v for k, v in selector["matchLabels"].items())
            and all(e["key"] not in s["metadata"]["labels"] for e in selector["matchExpressions"])
        ]
        assert len(selected) == 1, [s["metadata"]["name"] for s in selected]
        assert "metrics" in {p["name"] for p in selected[0]["spec"]["ports"]}
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def _prometheus_rule(values: dict[str, Any]) -> dict[str, Any]:
    (rule,) = of_kind(documents(render(values)), "PrometheusRule")
    return rule


def test_prometheus_rule_ships_the_rules_file_with_extra_labels() -> None:
    rule = _prometheus_rule(ALL_ON.values())
    shipped = yaml.safe_load((CHART_DIR / "rules" / "textserve.rules.yaml").read_text())
    assert [g["name"] for g in rule["spec"]["groups"]] == [g["name"] for g in shipped["groups"]]
    for got_group, want_group in zip(rule["spec"]["groups"], shipped["groups"], strict=True):
        assert len(got_group["rules"]) == len(want_group["rules"])
        for got, want in zip(got_group["rules"], want_group["rules"], strict=True):
            assert got["expr"] == want["expr"] and got["annotations"] == want["annotations"]
            assert got["labels"] == {**want["labels"], "team": "ml-platform"}
            assert got["for"] == want["for"]


def test_an_alert_label_wins_over_additional_labels() -> None:
    rule = _prometheus_rule(
        {
            "global": {
                "metrics": {
                    "prometheusRule": {"enabled": True, "additionalAlertLabels": {"severity": "page"}}
                }
            }
        }
    )
    severities = {r["labels"]["severity"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert severities <= {"warning", "critical"}


def test_prometheus_rule_spec_passes_promtool(tmp_path: Path) -> None:
    promtool = _promtool()
    rule = _prometheus_rule(ALL_ON.values())
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_dashboards_are_provisioned_for_the_grafana_sidecar() -> None:
    maps = [d for d in of_kind(scenario_docs(ALL_ON), "ConfigMap") if component_of(d) == "monitoring"]
    files = sorted((CHART_DIR / "dashboards").glob("*.json"))
    assert len(maps) == len(files) >= 3
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"]["grafana_folder"] == "textserve"
        ((key, text),) = config_map["data"].items()
        shipped = json.loads((CHART_DIR / "dashboards" / key).read_text())
        got = json.loads(text)
        # Release-scoped: uid and title name the release (two releases in one Grafana).
        assert got.pop("uid").startswith(shipped.pop("uid") + "-")
        assert got.pop("title") == f"{shipped.pop('title')} ({NAMESPACE}/demo)"
        assert got == shipped
        assert len(text.encode()) < 1024 * 1024, "ConfigMaps hold at most 1 MiB"


def test_dashboards_can_go_to_grafanas_namespace() -> None:
    values = {"global": {"metrics": {"dashboards": {"enabled": True, "namespace": "monitoring"}}}}
    maps = [d for d in of_kind(documents(render(values)), "ConfigMap") if component_of(d) == "monitoring"]
    assert maps and {m["metadata"]["namespace"] for m in maps} == {"monitoring"}


def test_service_monitor_relabelings_are_appended_after_the_release_label() -> None:
    extra = {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
    drop = {"sourceLabels": ["__name__"], "regex": "python_gc_.*", "action": "drop"}
    values = yaml.safe_load((CHART_DIR / "ci/cpu-values.yaml").read_text())
    values["global"]["metrics"]["serviceMonitor"].update(relabelings=[extra], metricRelabelings=[drop])
    monitors = of_kind(documents(render(values)), "ServiceMonitor")
    assert monitors
    for monitor in monitors:
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["relabelings"][0]["targetLabel"] == "release"
        assert endpoint["relabelings"][1:] == [extra]
        assert endpoint["metricRelabelings"] == [drop]


def test_service_monitors_have_no_metric_relabelings_unless_asked() -> None:
    for monitor in of_kind(scenario_docs(ALL_ON), "ServiceMonitor"):
        (endpoint,) = monitor["spec"]["endpoints"]
        assert [r["targetLabel"] for r in endpoint["relabelings"]] == ["release"]
        assert "metricRelabelings" not in endpoint


def _adapter_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs = documents(render(values))
    maps = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-adapter-rules")]
    if not maps:
        return []
    (config_map,) = maps
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert set(config) == {"rules"}
    return list(config["rules"])


def test_prometheus_adapter_rules_serve_each_queue_metric_per_pod() -> None:
    assert not _adapter_rules({}), "off by default"
    on = {"global": {"metrics": {"prometheusAdapter": {"rules": {"enabled": True}}}}}
    values = {**on, "services": {"generation": {"autoscaling": {"queueDepth": {"metricName": "my_waiting"}}}}}
    rules = _adapter_rules(values)
    names = [rule["name"]["as"] for rule in rules]
    assert names == [
        "textserve_queue_depth",
        "textserve_generation_waiting_sequences",
        "textserve_requests_in_flight",
        "my_waiting",
    ]
    for rule in rules:
        metric = rule["name"]["as"]
        assert rule["seriesQuery"] == f'{metric}{{namespace!="",pod!=""}}'
        assert rule["resources"] == {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        }
        assert rule["metricsQuery"] == "sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})"
    off = {"global": {"metrics": {"enabled": False, "prometheusAdapter": {"rules": {"enabled": True}}}}}
    assert not _adapter_rules(off), "no metrics, no adapter rules"


def test_prometheus_adapter_rules_can_go_to_the_adapters_namespace() -> None:
    rules = {"enabled": True, "namespace": "monitoring", "labels": {"team": "ml"}}
    docs = documents(render({"global": {"metrics": {"prometheusAdapter": {"rules": rules}}}}))
    maps = of_kind(docs, "ConfigMap")
    (config_map,) = [d for d in maps if d["metadata"]["name"].endswith("-adapter-rules")]
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["team"] == "ml"
