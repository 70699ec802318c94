"""Regression tests for the fleet-scale defects of issue 18, one (or a few) per defect.

Each test uses a values set an operator of a GPU cluster would try and the shipped tests
did not: per-variant digests, MIG / time-sliced / other vendors' GPUs, DRA claims, an
external Redis over TLS, string disruption budgets, autoscaling without an adapter, two
releases, and the small surprises listed under defect 10.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from helm_python import HelmRenderError, HelmValuesError

from tests.chart.conftest import (
    CHART_DIR,
    RELEASE,
    REPO,
    component_of,
    container,
    documents,
    env_of,
    of_kind,
    render,
    workload,
)

CPU_DIGEST = "sha256:" + "a" * 64
CUDA_DIGEST = "sha256:" + "c" * 64


def _refused(values: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises((HelmRenderError, HelmValuesError)) as caught:
        render(values, **kwargs)
    return str(caught.value)


def _gpu_service(limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An embedding service on the CUDA image with `limits` (default one whole GPU)."""
    resources = {"limits": {"cpu": "2", "memory": "4Gi", **(limits or {"nvidia.com/gpu": 1})}}
    return {"image": {"variant": "cuda"}, "model": {"device": "cuda"}, "resources": resources, **extra}


def _pod_spec(docs: list[dict[str, Any]], svc: str) -> dict[str, Any]:
    return dict(workload(docs, svc)["spec"]["template"]["spec"])


# --- 1. digests per variant -------------------------------------------------------------
def test_a_gpu_service_gets_the_digest_of_its_variant() -> None:
    values = {
        "global": {"image": {"digests": {"cpu": CPU_DIGEST, "cuda": CUDA_DIGEST}}},
        "services": {"embedding": _gpu_service()},
    }
    docs = documents(render(values))
    assert container(workload(docs, "embedding"))["image"] == f"textserve@{CUDA_DIGEST}"
    assert container(workload(docs, "tokenizer"))["image"] == f"textserve@{CPU_DIGEST}"


def test_one_global_digest_is_refused_for_a_service_of_another_variant() -> None:
    message = _refused(
        {"global": {"image": {"digest": CPU_DIGEST}}, "services": {"embedding": _gpu_service()}}
    )
    assert "services.embedding: uses the cuda image but global.image.digest" in message


def test_a_digest_does_not_skip_the_gpu_variant_check() -> None:
    values = {
        "global": {"image": {"digests": {"cpu": CPU_DIGEST}}},
        "services": {"generation": {"resources": {"limits": {"nvidia.com/gpu": 1}}}},
    }
    assert 'resources.limits asks for nvidia.com/gpu=1 but the image variant is "cpu"' in _refused(values)


# --- 2. GPU resource names ----------------------------------------------------------------
@pytest.mark.parametrize(
    "resource", ["nvidia.com/mig-1g.10gb", "nvidia.com/gpu.shared", "amd.com/gpu", "gpu.intel.com/i915"]
)
def test_gpu_resource_names_of_mig_time_slicing_and_other_vendors(resource: str) -> None:
    docs = documents(render({"services": {"embedding": _gpu_service({resource: 1})}}))
    assert container(workload(docs, "embedding"))["resources"]["limits"][resource] == 1


def test_the_gpu_resource_pattern_is_configurable() -> None:
    values = {
        "global": {"gpu": {"resourcePattern": "^example\\.com/accelerator$"}},
        "services": {"embedding": _gpu_service({"example.com/accelerator": 2})},
    }
    documents(render(values))
    message = _refused({**values, "services": {"embedding": _gpu_service({"nvidia.com/gpu": 1})}})
    assert (
        "model.device=cuda but resources.limits has no nvidia.com/gpu or other resource matching" in message
    )


# --- 3. DRA claims ------------------------------------------------------------------------
def test_container_claims_get_the_pod_level_resource_claims() -> None:
    claims = [{"name": "gpu", "resourceClaimTemplateName": "single-gpu"}]
    service = _gpu_service({}, resourceClaims=claims)
    service["resources"]["claims"] = [{"name": "gpu"}]
    docs = documents(render({"services": {"embedding": service}}))
    assert _pod_spec(docs, "embedding")["resourceClaims"] == claims
    assert container(workload(docs, "embedding"))["resources"]["claims"] == [{"name": "gpu"}]


def test_a_container_claim_without_a_pod_claim_is_refused() -> None:
    service = _gpu_service({})
    service["resources"]["claims"] = [{"name": "gpu"}]
    message = _refused({"services": {"embedding": service}})
    assert 'services.embedding: resources.claims names "gpu" but resourceClaims has no such claim' in message


# --- 4. Redis TLS needs rediss:// -------------------------------------------------------------
def test_redis_tls_with_a_plaintext_url_is_refused() -> None:
    redis = {
        "deploy": False,
        "url": "redis://redis.cache:6379/0",
        "tls": {"enabled": True, "existingSecret": "redis-ca"},
    }
    message = _refused({"global": {"redis": redis}})
    assert 'tls.enabled=true needs url to start with rediss:// (got "redis://redis.cache:6379/0")' in message


# --- 5. string disruption budgets --------------------------------------------------------------
@pytest.mark.parametrize("min_available", ["1", "100%", "60%"])
def test_a_string_min_available_that_blocks_drains_is_refused(min_available: str) -> None:
    message = _refused({"services": {"generation": {"pdb": {"minAvailable": min_available}}}})
    assert f"services.generation.pdb: minAvailable={min_available} with 1 replica(s)" in message


def test_a_percentage_that_leaves_room_renders() -> None:
    values = {"services": {"generation": {"replicas": 4, "pdb": {"minAvailable": "50%"}}}}
    (pdb,) = [
        p
        for p in of_kind(documents(render(values)), "PodDisruptionBudget")
        if component_of(p) == "generation"
    ]
    assert pdb["spec"]["minAvailable"] == "50%"


def test_max_unavailable_zero_is_refused() -> None:
    message = _refused({"services": {"embedding": {"pdb": {"maxUnavailable": 0}}}})
    assert "services.embedding.pdb: maxUnavailable=0 would block every voluntary eviction" in message


# --- 7. autoscaling -------------------------------------------------------------------------
def _hpa(docs: list[dict[str, Any]], svc: str) -> dict[str, Any]:
    (hpa,) = [h for h in of_kind(docs, "HorizontalPodAutoscaler") if component_of(h) == svc]
    return hpa


def test_autoscaling_adds_no_pods_metric_unless_asked() -> None:
    docs = documents(render({"services": {"embedding": {"autoscaling": {"enabled": True}}}}))
    assert [m["type"] for m in _hpa(docs, "embedding")["spec"]["metrics"]] == ["Resource"]


def test_a_gpu_service_gets_no_cpu_target_by_default() -> None:
    service = _gpu_service(
        autoscaling={"enabled": True, "queueDepth": {"enabled": True, "metricName": "textserve_queue_depth"}}
    )
    docs = documents(render({"services": {"embedding": service}}))
    assert [m["type"] for m in _hpa(docs, "embedding")["spec"]["metrics"]] == ["Pods"]


def test_a_gpu_service_without_a_scaling_signal_is_refused() -> None:
    message = _refused({"services": {"embedding": _gpu_service(autoscaling={"enabled": True})}})
    assert "services.embedding.autoscaling: enabled=true but no metric is set" in message


def test_metric_names_are_free() -> None:
    queue = {"enabled": True, "metricName": "textserve_queue_depth_avg", "averageValue": "10"}
    extra = [
        {
            "type": "External",
            "external": {"metric": {"name": "queue_messages"}, "target": {"type": "Value", "value": "5"}},
        }
    ]
    autoscaling = {"enabled": True, "queueDepth": queue, "extraMetrics": extra}
    docs = documents(render({"services": {"embedding": {"autoscaling": autoscaling}}}))
    metrics = _hpa(docs, "embedding")["spec"]["metrics"]
    assert metrics[1]["pods"]["metric"]["name"] == "textserve_queue_depth_avg"
    assert metrics[2] == extra[0]


def test_metrics_off_removes_every_metric_dependent_object() -> None:
    monitoring = {
        "enabled": False,
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboards": {"enabled": True},
    }
    docs = documents(render({"global": {"metrics": monitoring}}))
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert not [d for d in of_kind(docs, "ConfigMap") if component_of(d) == "monitoring"]
    queue = {"enabled": True, "metricName": "textserve_queue_depth"}
    message = _refused(
        {
            "global": {"metrics": monitoring},
            "services": {"embedding": {"autoscaling": {"enabled": True, "queueDepth": queue}}},
        }
    )
    assert "services.embedding.autoscaling: queueDepth needs global.metrics.enabled=true" in message


# --- 9. two releases -------------------------------------------------------------------------
DASHBOARDS = {"global": {"metrics": {"dashboards": {"enabled": True, "namespace": "monitoring"}}}}


def _dashboard_maps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in of_kind(docs, "ConfigMap") if component_of(d) == "monitoring"]


def test_one_release_name_in_two_namespaces_gets_distinct_dashboards() -> None:
    team_a = _dashboard_maps(documents(render(DASHBOARDS, name="textserve", namespace="team-a")))
    team_b = _dashboard_maps(documents(render(DASHBOARDS, name="textserve", namespace="team-b")))
    names_a = {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in team_a}
    names_b = {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in team_b}
    assert len(names_a) == len(team_a) >= 3 and not names_a & names_b


def _uids(maps: list[dict[str, Any]]) -> set[str]:
    import json

    return {json.loads(text)["uid"] for m in maps for text in m["data"].values()}


def test_two_releases_in_one_namespace_get_distinct_dashboard_uids() -> None:
    first = _uids(_dashboard_maps(documents(render(DASHBOARDS, name="alpha"))))
    second = _uids(_dashboard_maps(documents(render(DASHBOARDS, name="beta"))))
    assert len(first) == 4 and len(second) == 4 and not first & second
    assert all(len(uid) <= 40 for uid in first | second), "Grafana uids are at most 40 characters"


def test_alert_rules_keep_releases_apart() -> None:
    rules = yaml.safe_load((CHART_DIR / "rules" / "textserve.rules.yaml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        for clause in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in clause.split(",")}
            if "service" in labels:
                assert "release" in labels, f"{rule['alert']}: sum by ({clause}) merges releases"


def test_service_monitors_label_series_with_the_release() -> None:
    values = {"global": {"metrics": {"serviceMonitor": {"enabled": True}}}}
    for monitor in of_kind(documents(render(values)), "ServiceMonitor"):
        (endpoint,) = monitor["spec"]["endpoints"]
        assert {
            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "targetLabel": "release",
        } in endpoint["relabelings"]


# --- 10. the smaller ones ---------------------------------------------------------------------
def test_extra_env_values_must_be_strings() -> None:
    message = _refused({"services": {"embedding": {"extraEnv": [{"name": "OMP_NUM_THREADS", "value": 4}]}}})
    assert "/services/embedding/extraEnv/0/value" in message


def test_pod_annotations_merge_without_duplicate_keys() -> None:
    values = {
        "global": {"podAnnotations": {"team": "ml", "cost": "shared"}},
        "services": {"embedding": {"podAnnotations": {"team": "search"}}},
    }
    rendered = render(values)
    text = next(t for p, t in rendered.items() if p.endswith("deployment.yaml"))
    block = next(doc for doc in text.split("\n---") if "component: embedding" in doc)
    assert len(re.findall(r"^\s+team: ", block, re.MULTILINE)) == 1
    annotations = workload(documents(rendered), "embedding")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["team"] == "search" and annotations["cost"] == "shared"


def test_the_gateway_mounts_no_models_nor_redis_secrets() -> None:
    values = {
        "global": {
            "redis": {
                "deploy": False,
                "url": "rediss://redis.cache:6380/0",
                "auth": {"existingSecret": "redis-password"},
                "tls": {"enabled": True, "existingSecret": "redis-ca"},
            },
            "models": {"volume": {"persistentVolumeClaim": {"claimName": "models"}}},
        }
    }
    docs = documents(render(values))
    gateway = _pod_spec(docs, "gateway")
    assert {v["name"] for v in gateway["volumes"]} & {"models", "redis-password", "redis-tls"} == set()
    assert not [name for name in env_of(container(workload(docs, "gateway"))) if "CACHE__" in name]
    embedding = {v["name"] for v in _pod_spec(docs, "embedding")["volumes"]}
    assert {"models", "redis-password", "redis-tls"} <= embedding


def test_the_helm_test_pod_uses_the_global_variant() -> None:
    values = {"global": {"image": {"variant": "cuda", "tag": "0.2.0"}}}
    (pod,) = of_kind(documents(render(values)), "Pod")
    assert pod["spec"]["containers"][0]["image"] == "textserve:0.2.0-cuda"
    values = {"global": {"image": {"digests": {"cpu": CPU_DIGEST}}}}
    (pod,) = of_kind(documents(render(values)), "Pod")
    assert pod["spec"]["containers"][0]["image"] == f"textserve@{CPU_DIGEST}"


def test_the_hugging_face_cache_and_onnx_exports_are_separate_volumes() -> None:
    docs = documents(render({"global": {"onnxCache": {"sizeLimit": "8Gi"}, "hfCache": {"sizeLimit": "3Gi"}}}))
    deployment = workload(docs, "embedding")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
    env = env_of(container(deployment))
    assert volumes["onnx-cache"]["emptyDir"]["sizeLimit"] == "8Gi"
    assert volumes["cache"]["emptyDir"]["sizeLimit"] == "3Gi"
    assert env["TEXTSERVE_EMBEDDING__MODEL__ONNX_CACHE_DIR"] == mounts["onnx-cache"]
    assert env["HF_HOME"].startswith(mounts["cache"] + "/")
    assert "onnx-cache" not in mounts.keys() & {
        m["name"] for m in container(workload(docs, "tokenizer"))["volumeMounts"]
    }


def test_topology_spread_selectors_name_the_release() -> None:
    """A constraint without a labelSelector gets the component's selector (instance included)."""
    values = yaml.safe_load((CHART_DIR / "values-gpu.yaml").read_text())
    docs = documents(render(values))
    constraints = _pod_spec(docs, "embedding")["topologySpreadConstraints"]
    assert constraints
    for constraint in constraints:
        labels = constraint["labelSelector"]["matchLabels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/component"] == "embedding"


def test_both_images_run_the_same_python() -> None:
    text = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    cpu = re.search(r"ARG CPU_BASE_IMAGE=python:(\d+\.\d+)-", text)
    cuda = re.search(r"ARG CUDA_BASE_IMAGE=\S+-ubuntu(\d+\.\d+)", text)
    assert cpu and cuda
    ubuntu_python = {"22.04": "3.10", "24.04": "3.12"}
    assert cpu.group(1) == ubuntu_python[cuda.group(1)], "one Python version in both images"
