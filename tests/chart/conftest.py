"""Renders the chart offline with the real Helm engine (helm-python-sdk) once per values set."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python.chart import Chart

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "textserve"
RELEASE = "demo"
NAMESPACE = "ml"
GRPC_SERVICES = ("tokenizer", "embedding", "classifier", "generation")
COMPONENTS = (*GRPC_SERVICES, "gateway")
DEFAULT_PORTS = {
    "tokenizer": 50051,
    "embedding": 50052,
    "classifier": 50053,
    "generation": 50054,
    "gateway": 8080,
}
METRICS_PORT = 9090
GRPC_SERVICE_NAMES = {
    "tokenizer": "textserve.v1.TokenizerService",
    "embedding": "textserve.v1.EmbeddingService",
    "classifier": "textserve.v1.ClassifierService",
    "generation": "textserve.v1.GenerationService",
}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
# kubernetes-validate ships schemas for; every manifest must be valid on both.
KUBE_VERSIONS = ("1.30.0", "1.37.0")


@dataclass(frozen=True)
class Scenario:
    """A values set the chart must render: defaults, a ci/ file or values-gpu.yaml."""

    name: str
    files: tuple[str, ...] = ()

    def values(self) -> dict[str, Any]:
        """The user-supplied values (what `-f file` would pass)."""
        merged: dict[str, Any] = {}
        for name in self.files:
            merged.update(yaml.safe_load((CHART_DIR / name).read_text()) or {})
        return merged


SCENARIOS = (
    Scenario("default"),
    Scenario("ci-cpu", ("ci/cpu-values.yaml",)),
    Scenario("ci-gpu", ("ci/gpu-values.yaml",)),
    Scenario("ci-no-redis", ("ci/no-redis-values.yaml",)),
    Scenario("ci-embedding-only", ("ci/embedding-only-values.yaml",)),
    Scenario("values-gpu", ("values-gpu.yaml",)),
    Scenario("ci-keda", ("ci/keda-values.yaml",)),
    Scenario("ci-init-weights", ("ci/init-weights-values.yaml",)),
    Scenario("ci-mig", ("ci/mig-values.yaml",)),
    Scenario("ci-dra-claims", ("ci/dra-claims-values.yaml",)),
    Scenario("ci-two-releases", ("ci/two-releases-values.yaml",)),
    Scenario("ci-ner", ("ci/ner-values.yaml",)),
    Scenario("ci-model-repository", ("ci/model-repository-values.yaml",)),
)
SCENARIO_IDS = [scenario.name for scenario in SCENARIOS]


@functools.cache
def chart() -> Chart:
    """The chart, loaded once."""
    return Chart.load(CHART_DIR)


def render(
    values: dict[str, Any] | None = None, name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """template path -> rendered text (NOTES.txt included)."""
    return chart().render(values or {}, name=name, namespace=namespace)


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a render, NOTES.txt left out."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


@functools.cache
def _rendered(scenario: Scenario) -> tuple[dict[str, str], tuple[dict[str, Any], ...]]:
    rendered = render(scenario.values())
    return rendered, tuple(documents(rendered))


def scenario_docs(scenario: Scenario) -> list[dict[str, Any]]:
    """The objects of a scenario (rendered once per session; callers must not mutate them)."""
    return list(_rendered(scenario)[1])


def scenario_notes(scenario: Scenario) -> str:
    """NOTES.txt of a scenario."""
    return next(text for path, text in _rendered(scenario)[0].items() if path.endswith("NOTES.txt"))


def merged_values(scenario: Scenario) -> dict[str, Any]:
    """Chart defaults coalesced with the scenario's values (what the templates see)."""
    return chart().merge_values(scenario.values())


def enabled_components(scenario: Scenario) -> list[str]:
    """Components (gRPC services and gateway) the scenario deploys."""
    values = merged_values(scenario)
    enabled = [svc for svc in GRPC_SERVICES if values["services"][svc]["enabled"]]
    return [*enabled, "gateway"] if values["gateway"]["enabled"] else enabled


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Objects of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]


def component_of(doc: dict[str, Any]) -> str:
    """app.kubernetes.io/component of an object."""
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def workload(docs: list[dict[str, Any]], svc: str) -> dict[str, Any]:
    """The Deployment of one component."""
    matches = [doc for doc in of_kind(docs, "Deployment") if component_of(doc) == svc]
    assert len(matches) == 1, f"expected one Deployment for {svc}, found {len(matches)}"
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The textserve container of a Deployment (sidecars, when configured, come after it)."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    ours = [c for c in containers if c["name"].startswith("textserve-")] or containers
    assert len(ours) == 1 and containers[0] is ours[0]
    return dict(ours[0])


def env_of(ctr: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom mapping) of a container's environment."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in ctr.get("env", [])}


@pytest.fixture(params=SCENARIOS, ids=SCENARIO_IDS)
def scenario(request: pytest.FixtureRequest) -> Scenario:
    """Each values set in turn."""
    return request.param  # type: ignore[no-any-return]
