"""The rendered chart, for every values set: valid Kubernetes, names, labels, ports, probes, security."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.chart.conftest import (
    COMPONENTS,
    DEFAULT_PORTS,
    GRPC_SERVICE_NAMES,
    GRPC_SERVICES,
    KUBE_VERSIONS,
    METRICS_PORT,
    NAMESPACE,
    RELEASE,
    Scenario,
    component_of,
    container,
    documents,
    enabled_components,
    env_of,
    merged_values,
    of_kind,
    render,
    scenario_docs,
    scenario_notes,
    workload,
)
from tests.deploy.promql import exported_series

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
COMMON_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
)
SELECTOR_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")
SHARED_COMPONENTS = ("redis", "monitoring", "test", "fetch")
CRD_KINDS = ("ServiceMonitor", "PrometheusRule", "ScaledObject")


def _port(scenario: Scenario, svc: str) -> int:
    values = merged_values(scenario)
    section = values["gateway"] if svc == "gateway" else values["services"][svc]
    return int(section["port"])


def _tls(scenario: Scenario) -> bool:
    return bool(merged_values(scenario)["global"]["tls"]["enabled"])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- Kubernetes validity ----------------------------------------------------------------
# Fields newer than the oldest supported Kubernetes, allowed there for the scenario that
# needs them: DRA's PodResourceClaim.resourceClaimTemplateName exists since 1.31 (in 1.30,
# DRA was an alpha API of another shape).
NEWER_FIELDS = {("ci-dra-claims", "1.30.0"): "spec.template.spec.resourceClaims."}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(scenario: Scenario, kube_version: str) -> None:
    newer = NEWER_FIELDS.get((scenario.name, kube_version))
    problems = []
    for doc in scenario_docs(scenario):
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # CRDs: checked in test_monitoring.py (structure, promtool).
            assert doc["kind"] in CRD_KINDS, f"no schema for {doc['kind']} {doc['apiVersion']}"
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            if newer and path.startswith(newer):
                continue
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {error.message}")
    assert not problems, "\n".join(problems)


def test_strict_validation_catches_an_unknown_field() -> None:
    deployment = copy.deepcopy(workload(scenario_docs(Scenario("default")), "embedding"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_expected_objects_per_component(scenario: Scenario) -> None:
    docs = scenario_docs(scenario)
    values = merged_values(scenario)
    for svc in COMPONENTS:
        enabled = svc in enabled_components(scenario)
        own = [doc for doc in docs if component_of(doc) == svc]
        kinds = sorted(doc["kind"] for doc in own)
        if not enabled:
            assert own == [], f"{svc} is disabled but renders {kinds}"
            continue
        expected = {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
        assert expected <= set(kinds), f"{svc}: {kinds}"
        services = of_kind(own, "Service")
        assert len(services) == (1 if svc == "gateway" else 2), f"{svc}: ClusterIP (+ headless for gRPC)"
        section = values["gateway"] if svc == "gateway" else values["services"][svc]
        assert len(of_kind(own, "HorizontalPodAutoscaler")) == int(section["autoscaling"]["enabled"])
        monitors = of_kind(own, "ServiceMonitor")
        assert len(monitors) == int(values["global"]["metrics"]["serviceMonitor"]["enabled"])
        assert len(of_kind(own, "NetworkPolicy")) == int(values["global"]["networkPolicy"]["enabled"])


# --- names and labels -------------------------------------------------------------------
def test_names_are_unique_dns_labels(scenario: Scenario) -> None:
    seen = set()
    for doc in scenario_docs(scenario):
        name = doc["metadata"]["name"]
        assert len(name) <= 63, f"{doc['kind']}/{name} is {len(name)} characters"
        assert DNS_LABEL.match(name), f"{doc['kind']}/{name} is not a DNS label"
        key = (doc["kind"], name)
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


def test_long_release_names_keep_names_short_and_distinct() -> None:
    release = "inference-" + "x" * 43  # 53 characters: Helm's limit; fullname would be 63
    assert len(release) == 53
    docs = documents(render({}, name=release))
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert all(len(name) <= 63 and DNS_LABEL.match(name) for _, name in names), names
    assert len(set(names)) == len(names)
    for svc in COMPONENTS:
        deployment = workload(docs, svc)
        assert deployment["metadata"]["name"].endswith(f"-{svc}")
    headless = [name for kind, name in names if kind == "Service" and name.endswith("-headless")]
    assert len(headless) == len(GRPC_SERVICES)


def test_every_object_carries_the_common_labels(scenario: Scenario) -> None:
    enabled = enabled_components(scenario)
    for doc in scenario_docs(scenario):
        labels = doc["metadata"].get("labels", {})
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        missing = [label for label in COMMON_LABELS if label not in labels]
        assert not missing, f"{where} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "textserve"
        component = labels["app.kubernetes.io/component"]
        assert component in (*enabled, *SHARED_COMPONENTS), f"{where}: component {component}"
        if component in COMPONENTS:
            assert f"-{component}" in doc["metadata"]["name"], where


def test_selectors_are_a_subset_of_pod_labels(scenario: Scenario) -> None:
    docs = scenario_docs(scenario)
    deployments = of_kind(docs, "Deployment")
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in deployments}
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert sorted(selector) == sorted(SELECTOR_LABELS)
        assert _matches(selector, pods[deployment["metadata"]["name"]])
        assert _matches(selector, deployment["metadata"]["labels"])
    for kind, path in (
        ("Service", ("spec", "selector")),
        ("PodDisruptionBudget", ("spec", "selector", "matchLabels")),
        ("NetworkPolicy", ("spec", "podSelector", "matchLabels")),
    ):
        for doc in of_kind(docs, kind):
            selector: Any = doc
            for key in path:
                selector = selector[key]
            matched = [name for name, labels in pods.items() if _matches(selector, labels)]
            assert len(matched) == 1, f"{kind}/{doc['metadata']['name']} selects {matched}"
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in pods


# --- ports, env, probes -----------------------------------------------------------------
def test_ports_follow_the_contract(scenario: Scenario) -> None:
    docs = scenario_docs(scenario)
    for svc in enabled_components(scenario):
        port = _port(scenario, svc)
        assert port == DEFAULT_PORTS[svc]
        ctr = container(workload(docs, svc))
        ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
        main = "http" if svc == "gateway" else "grpc"
        ports.pop("health", None)  # TLS only: test_grpc_probes
        assert ports == {main: port, "metrics": METRICS_PORT}, f"{svc}: {ports}"
        env = env_of(ctr)
        port_var = "TEXTSERVE_GATEWAY__PORT" if svc == "gateway" else f"TEXTSERVE_{svc.upper()}__SERVER__PORT"
        assert env[port_var] == str(port)
        assert env["TEXTSERVE_METRICS__PORT"] == str(METRICS_PORT)
        services = [s for s in of_kind(docs, "Service") if component_of(s) == svc]
        for service in services:
            service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
            assert service_ports[main] == (port, main)
            if service["spec"].get("clusterIP") == "None":
                assert svc != "gateway"
                assert service["metadata"]["name"].endswith("-headless")
                assert "metrics" not in service_ports, "the headless Service must not be scraped twice"
            else:
                assert service_ports["metrics"] == (METRICS_PORT, "metrics")


def test_container_runs_the_service_by_its_arguments(scenario: Scenario) -> None:
    docs = scenario_docs(scenario)
    for svc in enabled_components(scenario):
        ctr = container(workload(docs, svc))
        assert ctr["name"] == f"textserve-{svc}", "the restart alert selects container=~textserve-.+"
        assert ctr["args"] == ["serve", svc]
        assert "command" not in ctr, "the image's entrypoint (tini -- textserve) must stay"


def test_environment(scenario: Scenario) -> None:
    docs = scenario_docs(scenario)
    for svc in enabled_components(scenario):
        deployment = workload(docs, svc)
        ctr = container(deployment)
        names = [item["name"] for item in ctr["env"]]
        assert len(names) == len(set(names)), f"{svc}: duplicate env {names}"
        env = env_of(ctr)
        config_file = env["TEXTSERVE_CONFIG_FILE"]
        mounts = {m["name"]: m for m in ctr["volumeMounts"]}
        assert config_file == f"{mounts['config']['mountPath']}/textserve.yaml"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        config_map = volumes["config"]["configMap"]["name"]
        data = next(c["data"] for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"] == config_map)
        assert "textserve.yaml" in data
        if svc not in ("gateway", "tokenizer"):
            onnx_dir = env[f"TEXTSERVE_{svc.upper()}__MODEL__ONNX_CACHE_DIR"]
            assert onnx_dir.startswith(mounts["cache"]["mountPath"] + "/")
        for name, value in env.items():
            if isinstance(value, dict):
                assert set(value) == {"secretKeyRef"}, f"{svc}: {name} comes from {value}"


def test_grpc_probes(scenario: Scenario) -> None:
    """Native kubelet gRPC probes: "" for startup and liveness, the full service name for
    readiness; with TLS on they go to the plaintext health-only port."""
    docs = scenario_docs(scenario)
    values = merged_values(scenario)
    for svc in enabled_components(scenario):
        ctr = container(workload(docs, svc))
        if svc == "gateway":
            paths = {
                "startupProbe": values["gateway"]["livenessPath"],
                "livenessProbe": values["gateway"]["livenessPath"],
                "readinessProbe": values["gateway"]["readinessPath"],
            }
            for kind, path in paths.items():
                probe = ctr[kind]
                if path:
                    assert probe["httpGet"] == {"path": path, "port": "http"}, kind
                else:
                    assert probe["tcpSocket"] == {"port": "http"}, kind
            continue
        port = values["global"]["tls"]["healthPort"] if _tls(scenario) else _port(scenario, svc)
        assert ctr["startupProbe"]["grpc"] == {"port": port, "service": ""}
        assert ctr["livenessProbe"]["grpc"] == {"port": port, "service": ""}
        assert ctr["readinessProbe"]["grpc"] == {"port": port, "service": GRPC_SERVICE_NAMES[svc]}
        assert ctr["startupProbe"]["failureThreshold"] * ctr["startupProbe"]["periodSeconds"] >= 300, (
            "model loading (and ONNX export) needs minutes"
        )
        if _tls(scenario):
            env = env_of(ctr)
            assert env[f"TEXTSERVE_{svc.upper()}__SERVER__HEALTH_PORT"] == str(port)
            assert {"name": "health", "containerPort": port, "protocol": "TCP"} in ctr["ports"]


def test_no_exec_probes(scenario: Scenario) -> None:
    """No Docker-HEALTHCHECK-style commands: gRPC health, HTTP or TCP probes only."""
    for deployment in of_kind(scenario_docs(scenario), "Deployment"):
        if component_of(deployment) == "redis":
            continue
        ctr = container(deployment)
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "exec" not in ctr[kind], f"{deployment['metadata']['name']} {kind}"


# --- security ---------------------------------------------------------------------------
def test_hardened_security_context(scenario: Scenario) -> None:
    docs = scenario_docs(scenario)
    for deployment in of_kind(docs, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        where = deployment["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        ctr = spec["containers"][0]
        sec = ctr["securityContext"]
        assert sec["readOnlyRootFilesystem"] is True, where
        assert sec["allowPrivilegeEscalation"] is False, where
        assert sec["capabilities"] == {"drop": ["ALL"]}, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        for mount in ctr["volumeMounts"]:
            volume = volumes[mount["name"]]
            if not mount.get("readOnly", False):
                scratch = "emptyDir" in volume or (
                    component_of(deployment) in COMPONENTS and mount["name"] == "cache"
                )
                assert scratch, f"{where}: {mount['mountPath']} is writable but not scratch space"
        if component_of(deployment) in COMPONENTS:
            paths = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
            assert "emptyDir" in volumes[paths["/tmp"]], where
            assert "/var/cache/textserve" in paths, where


def test_pod_security_of_the_helm_test_pod(scenario: Scenario) -> None:
    pods = of_kind(scenario_docs(scenario), "Pod")
    assert len(pods) == 1
    spec = pods[0]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


# --- GPU --------------------------------------------------------------------------------
# Scenarios whose services use a GPU other than a whole nvidia.com/gpu (MIG, time-slicing, DRA).
SHARED_GPU_SCENARIOS = {"ci-mig": ("embedding", "generation"), "ci-dra-claims": ("generation",)}


def test_gpu_workers(scenario: Scenario) -> None:
    docs = scenario_docs(scenario)
    gpu_scenario = scenario.name in ("ci-gpu", "values-gpu")
    for svc in enabled_components(scenario):
        deployment = workload(docs, svc)
        spec = deployment["spec"]["template"]["spec"]
        ctr = container(deployment)
        gpus = int(ctr["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
        image_variant = ctr["image"].rsplit("-", 1)[-1]
        if svc in SHARED_GPU_SCENARIOS.get(scenario.name, ()):
            limits = set(ctr["resources"].get("limits", {}))
            shared = limits & {"nvidia.com/mig-1g.10gb", "nvidia.com/gpu.shared"}
            assert shared or ctr["resources"].get("claims"), f"{svc}: a MIG slice, a shared GPU or a claim"
            assert image_variant == "cuda", ctr["image"]
            assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "no surge GPU pod"
        elif gpu_scenario and svc in ("embedding", "generation"):
            assert gpus >= 1, f"{svc} must ask for a GPU"
            assert image_variant == "cuda", ctr["image"]
            assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])), svc
            assert spec.get("nodeSelector"), f"{svc} must be pinned to GPU nodes"
            model = merged_values(scenario)["services"][svc]["model"]
            assert model["device"] == "cuda"
        else:
            assert gpus == 0, f"{svc} must not hold a GPU in {scenario.name}"
            assert image_variant == "cpu", ctr["image"]
    assert (
        any(
            "nvidia.com/gpu" in container(d)["resources"].get("limits", {})
            for d in of_kind(docs, "Deployment")
        )
        == gpu_scenario
    )


# --- autoscaling, budgets ---------------------------------------------------------------
def test_autoscaling(scenario: Scenario) -> None:
    exported = exported_series()
    docs = scenario_docs(scenario)
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        svc = component_of(hpa)
        deployment = workload(docs, svc)
        assert "replicas" not in deployment["spec"], f"{svc}: the HPA owns replicas"
        kinds = {m["type"] for m in hpa["spec"]["metrics"]}
        assert kinds <= {"Resource", "Pods"} and kinds
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                name = metric["pods"]["metric"]["name"]
                assert name in exported, f"{svc}: HPA metric {name} is not exported by textserve"
                assert metric["pods"]["target"]["type"] == "AverageValue"
            else:
                assert metric["resource"]["name"] == "cpu"
    if scenario.name == "values-gpu":
        hpas = {component_of(h): h for h in of_kind(docs, "HorizontalPodAutoscaler")}
        queue = [m for m in hpas["embedding"]["spec"]["metrics"] if m["type"] == "Pods"]
        assert queue and queue[0]["pods"]["metric"]["name"] == "textserve_queue_depth"
        assert [m["type"] for m in hpas["embedding"]["spec"]["metrics"]] == ["Pods"], "GPU pods: queue only"


def test_disruption_budgets_never_block_drains(scenario: Scenario) -> None:
    for pdb in of_kind(scenario_docs(scenario), "PodDisruptionBudget"):
        assert "maxUnavailable" in pdb["spec"] or pdb["spec"]["minAvailable"] != 0
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_graceful_shutdown_budget(scenario: Scenario) -> None:
    for svc in enabled_components(scenario):
        spec = workload(scenario_docs(scenario), svc)["spec"]["template"]["spec"]
        ctr = spec["containers"][0]
        sleep = ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert spec["terminationGracePeriodSeconds"] > sleep


# --- Redis, network, helm test, notes ---------------------------------------------------
def test_redis_is_deployed_only_when_used(scenario: Scenario) -> None:
    values = merged_values(scenario)["global"]
    docs = scenario_docs(scenario)
    redis = [doc for doc in docs if component_of(doc) == "redis" and doc["kind"] in ("Deployment", "Service")]
    wanted = values["cache"]["backend"] == "redis" and values["redis"]["deploy"]
    assert len(redis) == (2 if wanted else 0)
    if wanted:
        deployment = next(d for d in redis if d["kind"] == "Deployment")
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert ("--requirepass" in args) == bool(values["redis"]["auth"]["existingSecret"])
        assert args[args.index("--save") + 1] == "", "a cache: no persistence"


def test_network_policies_allow_release_pods_and_scrapers(scenario: Scenario) -> None:
    docs = scenario_docs(scenario)
    for policy in of_kind(docs, "NetworkPolicy"):
        svc = component_of(policy)
        rules = policy["spec"]["ingress"]
        if svc == "redis":
            assert rules[0]["ports"] == [{"port": "redis", "protocol": "TCP"}]
            continue
        main = "http" if svc == "gateway" else "grpc"
        serving = next(r for r in rules if r["ports"][0]["port"] == main)
        release = {"app.kubernetes.io/name": "textserve", "app.kubernetes.io/instance": RELEASE}
        assert {"podSelector": {"matchLabels": release}} in serving["from"]
        assert any(r["ports"][0]["port"] == "metrics" for r in rules)


def test_helm_test_pod_checks_every_enabled_service(scenario: Scenario) -> None:
    pod = of_kind(scenario_docs(scenario), "Pod")[0]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "/etc/textserve/test/grpc_health_check.py"]
    targets = [arg for arg in command if "://" in arg]
    enabled = enabled_components(scenario)
    expected = []
    for svc in GRPC_SERVICES:
        if svc in enabled:
            host = f"{RELEASE}-textserve-{svc}-headless.{NAMESPACE}.svc.cluster.local"
            expected.append(f"grpc://{host}:{DEFAULT_PORTS[svc]}/{GRPC_SERVICE_NAMES[svc]}")
    if "gateway" in enabled:
        path = merged_values(scenario)["gateway"]["readinessPath"]
        host = f"{RELEASE}-textserve-gateway.{NAMESPACE}.svc.cluster.local:8080"
        expected.append(f"http://{host}{path}" if path else f"tcp://{host}")
    assert targets == expected
    assert ("--tls-ca" in command) == _tls(scenario)


def test_notes_tell_how_to_call_each_service(scenario: Scenario) -> None:
    notes = scenario_notes(scenario)
    for svc in enabled_components(scenario):
        assert f"{RELEASE}-textserve-{svc}.{NAMESPACE}.svc" in notes, svc
    for svc in GRPC_SERVICES:
        if svc in enabled_components(scenario):
            assert GRPC_SERVICE_NAMES[svc] in notes
    assert f"helm test {RELEASE}" in notes


def test_config_changes_roll_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = workload(documents(render(values)), "embedding")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum({})
    assert checksum({"services": {"embedding": {"batcher": {"maxBatchSize": 8}}}}) != base
    assert checksum({"services": {"generation": {"config": {"max_new_tokens_default": 8}}}}) == base
