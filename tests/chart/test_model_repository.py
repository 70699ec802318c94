"""Model repositories in the chart: the read-only volume, the `repository` config section and
the routing ConfigMap, which a `helm upgrade` changing only weights or the shadow rewrites
without touching a pod template (no restart)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python import HelmRenderError, HelmValuesError

from tests.chart.conftest import (
    RELEASE,
    Scenario,
    component_of,
    container,
    documents,
    env_of,
    of_kind,
    render,
    scenario_docs,
    scenario_notes,
    workload,
)

REPOSITORY = Scenario("ci-model-repository", ("ci/model-repository-values.yaml",))
VERSIONED = ("embedding", "classifier", "generation")
ROUTING_FILE = "/etc/textserve/routing/routing.yaml"


def _routing_maps(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """component -> its routing ConfigMap."""
    return {
        component_of(c): c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-routing")
    }


def _with_routing(svc: str, routing: dict[str, Any]) -> dict[str, Any]:
    values = copy.deepcopy(REPOSITORY.values())
    values["services"][svc]["repository"]["routing"] = routing
    return values


def _pod_config(docs: list[dict[str, Any]], svc: str) -> dict[str, Any]:
    name = workload(docs, svc)["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    config_map = next(c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"] == name)
    return dict(yaml.safe_load(config_map["data"]["textserve.yaml"]))


def test_changing_only_weights_and_shadow_leaves_every_pod_template_byte_identical() -> None:
    """helm upgrade with new weights: the Deployments render to the same bytes (the
    checksum/config annotation included), only the service's routing ConfigMap changes."""
    before = render(_with_routing("embedding", {"weights": {"1": 90, "2": 10}, "shadowVersion": "3"}))
    after = render(
        _with_routing("embedding", {"weights": {"1": 0, "2": 100}, "shadowVersion": "1", "shadowShare": 0.5})
    )
    deployments = "textserve/templates/deployment.yaml"
    assert before[deployments] == after[deployments]
    changed = sorted(path for path in before if before[path] != after[path])
    assert changed == ["textserve/templates/routing-configmap.yaml"]
    old, new = _routing_maps(documents(before)), _routing_maps(documents(after))
    assert old["classifier"] == new["classifier"] and old["generation"] == new["generation"]
    assert yaml.safe_load(new["embedding"]["data"]["routing.yaml"]) == {
        "weights": {"1": 0, "2": 100},
        "shadow_version": "1",
        "shadow_share": 0.5,
    }
    assert old["embedding"]["metadata"] == new["embedding"]["metadata"], "same object, updated in place"


def test_a_repository_setting_outside_routing_still_rolls_the_pods() -> None:
    """The version policy and poll interval are in the main config: its checksum moves."""

    def checksums(values: dict[str, Any]) -> dict[str, str]:
        docs = documents(render(values))
        return {
            svc: workload(docs, svc)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for svc in VERSIONED
        }

    base = REPOSITORY.values()
    changed = copy.deepcopy(base)
    changed["services"]["embedding"]["repository"]["pollIntervalSeconds"] = 60
    old, new = checksums(base), checksums(changed)
    assert old["embedding"] != new["embedding"]
    assert old["classifier"] == new["classifier"] and old["generation"] == new["generation"]


def test_the_repository_is_mounted_read_only_with_the_routing_file_beside_it() -> None:
    docs = scenario_docs(REPOSITORY)
    expected_sources = {
        "embedding": {"persistentVolumeClaim": {"claimName": "textserve-model-repository", "readOnly": True}},
        "classifier": {"emptyDir": {"sizeLimit": "20Gi"}},
        "generation": {"hostPath": {"path": "/srv/textserve/generation", "type": "Directory"}},
    }
    for svc in VERSIONED:
        deployment = workload(docs, svc)
        ctr = container(deployment)
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["name"]: m for m in ctr["volumeMounts"]}
        repository = mounts["model-repository"]
        assert repository["readOnly"] is True and repository["mountPath"] == "/var/lib/textserve/repository"
        source = {k: v for k, v in volumes["model-repository"].items() if k != "name"}
        assert source == expected_sources[svc], svc
        routing = mounts["routing"]
        assert routing["readOnly"] is True and "subPath" not in routing, "a subPath mount never updates"
        assert volumes["routing"]["configMap"]["name"] == f"{RELEASE}-textserve-{svc}-routing"
        env = env_of(ctr)
        prefix = f"TEXTSERVE_{svc.upper()}__REPOSITORY__"
        assert env[prefix + "PATH"] == repository["mountPath"]
        assert env[prefix + "ROUTING_FILE"] == ROUTING_FILE
        assert Path(ROUTING_FILE).parent == Path(routing["mountPath"])
    # The sidecar filling the classifier's emptyDir writes where the service reads.
    spec = workload(docs, "classifier")["spec"]["template"]["spec"]
    sync = next(c for c in spec["containers"] if c["name"] == "repository-sync")
    assert sync["volumeMounts"] == [{"name": "model-repository", "mountPath": "/repository"}]


def test_the_repository_config_section() -> None:
    docs = scenario_docs(REPOSITORY)
    assert _pod_config(docs, "embedding")["embedding"]["repository"] == {
        "model_name": "all-MiniLM-L6-v2",
        "poll_interval_s": 15,
        "version_policy": "all",
        "latest_n": 1,
    }
    assert _pod_config(docs, "classifier")["classifier"]["repository"] == {
        "poll_interval_s": 0,
        "version_policy": "specific",
        "latest_n": 1,
        "specific_versions": ["1", "2"],
    }
    generation = _pod_config(docs, "generation")["generation"]["repository"]
    assert generation == {"poll_interval_s": 30, "version_policy": "latest", "latest_n": 2}
    for svc in VERSIONED:
        section = _pod_config(docs, svc)[svc]["repository"]
        routing_keys = {"weights", "shadow_version", "shadow_share"}
        assert not routing_keys & set(section), "routing stays out of the checksummed config"


def test_the_routing_files() -> None:
    maps = _routing_maps(scenario_docs(REPOSITORY))
    assert set(maps) == set(VERSIONED)
    files = {svc: yaml.safe_load(m["data"]["routing.yaml"]) for svc, m in maps.items()}
    assert files["embedding"] == {"weights": {"1": 90, "2": 10}, "shadow_version": "3", "shadow_share": 0.25}
    assert files["classifier"] == {"weights": {"1": 100, "2": 0}, "shadow_version": "2", "shadow_share": 1}
    assert files["generation"] == {"weights": {}, "shadow_version": "", "shadow_share": 0}


def test_the_routing_file_loads_as_the_services_settings() -> None:
    """Depends on the server side of issue 14 (textserve.core.config.ModelRepositoryConfig):
    the routing file holds the repository section's own keys and values."""
    from textserve.core.config import ModelRepositoryConfig

    for svc, config_map in _routing_maps(scenario_docs(REPOSITORY)).items():
        routing = yaml.safe_load(config_map["data"]["routing.yaml"])
        config = ModelRepositoryConfig(**routing)
        assert dict(config.weights) == {str(k): v for k, v in routing["weights"].items()}, svc
        assert config.shadow_version == routing["shadow_version"], svc
        assert config.shadow_share == routing["shadow_share"], svc


def test_no_repository_by_default() -> None:
    """Off by default: one model, one version; nothing new in the pods or the config."""
    docs = scenario_docs(Scenario("default"))
    assert _routing_maps(docs) == {}
    for svc in VERSIONED:
        ctr = container(workload(docs, svc))
        assert not {"model-repository", "routing"} & {m["name"] for m in ctr["volumeMounts"]}
        assert not [name for name in env_of(ctr) if "__REPOSITORY__" in name]
        assert "repository" not in _pod_config(docs, svc)[svc]


def test_a_disabled_service_gets_no_routing_config_map() -> None:
    values = REPOSITORY.values()
    values["services"]["generation"]["enabled"] = False
    assert set(_routing_maps(documents(render(values)))) == {"embedding", "classifier"}


def test_the_tokenizer_has_no_repository() -> None:
    with pytest.raises(HelmValuesError, match="'repository' not allowed"):
        render({"services": {"tokenizer": {"repository": {"enabled": True}}}})


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ({"weights": {"v2": 10}}, "/services/embedding/repository/routing/weights"),
        ({"weights": {"2": -1}}, "/services/embedding/repository/routing/weights/2"),
        ({"shadowShare": 1.5}, "/services/embedding/repository/routing/shadowShare"),
        ({"shadowVersion": "latest"}, "/services/embedding/repository/routing/shadowVersion"),
    ],
    ids=["version-name", "negative-weight", "share-above-one", "shadow-not-a-version"],
)
def test_the_schema_refuses_bad_routing(routing: dict[str, Any], message: str) -> None:
    values = {"services": {"embedding": {"repository": {"enabled": True, "routing": routing}}}}
    with pytest.raises(HelmValuesError) as caught:
        render(values)
    assert message in str(caught.value)


def _repository(**fields: Any) -> dict[str, Any]:
    return {"services": {"embedding": {"repository": fields}}}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            _repository(routing={"weights": {"1": 90}}),
            "services.embedding.repository: routing (weights, shadowVersion) is set but enabled=false",
        ),
        (
            _repository(enabled=True, routing={"weights": {"1": 90, "2": 10}}),
            "services.embedding.repository: routing sends traffic to 2 versions (1, 2) but "
            "versionPolicy=latest keeps latestN=1 loaded",
        ),
        (
            _repository(
                enabled=True,
                versionPolicy="specific",
                specificVersions=["1"],
                routing={"weights": {"1": 90, "2": 10}, "shadowVersion": "3"},
            ),
            "services.embedding.repository: routing sends traffic to version(s) 2, 3, which "
            "versionPolicy=specific does not load (specificVersions: 1)",
        ),
        (
            _repository(enabled=True, versionPolicy="specific"),
            "services.embedding.repository: versionPolicy=specific needs specificVersions",
        ),
        (
            _repository(enabled=True, versionPolicy="all", routing={"weights": {"1": 0, "2": 0}}),
            "services.embedding.repository.routing: every weight is 0",
        ),
        (
            _repository(enabled=True, versionPolicy="all", routing={"shadowShare": 0.5}),
            "services.embedding.repository.routing: shadowShare=0.5 needs shadowVersion",
        ),
        (
            {
                "services": {
                    "embedding": {
                        "repository": {"enabled": True, "mountPath": "/models/own"},
                        "modelStorage": {"volume": {"persistentVolumeClaim": {"claimName": "m"}}},
                    }
                }
            },
            "services.embedding.repository: mountPath=/models/own is already a mount of the embedding",
        ),
        (
            _repository(enabled=True, mountPath="/etc/textserve/routing/"),
            "services.embedding.repository: mountPath=/etc/textserve/routing/ is already a mount",
        ),
    ],
    ids=[
        "routing-without-repository",
        "latest-n-too-small",
        "specific-misses",
        "specific-empty",
        "all-zero",
        "share-without-shadow",
        "mount-path-of-the-model-storage",
        "mount-path-of-the-routing-file",
    ],
)
def test_routing_the_policy_does_not_load_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmRenderError) as caught:
        render(values)
    assert "VALUES VALIDATION" in str(caught.value) and message in str(caught.value)


def test_routing_within_the_policy_renders() -> None:
    render(_repository(enabled=True, latestN=2, routing={"weights": {"1": 50, "2": 50}}))
    render(
        _repository(
            enabled=True,
            versionPolicy="specific",
            specificVersions=["1", "3"],
            routing={"weights": {"1": 90, "3": 10, "2": 0}, "shadowVersion": "3", "shadowShare": 0.1},
        )
    )


def test_the_pods_settings_point_at_the_mounts(tmp_path: Path) -> None:
    """Depends on the server side of issue 14: ConfigMap + environment load as textserve
    settings whose repository section names the mounted repository and routing file."""
    from tests.chart.test_config import _pod_settings

    docs = scenario_docs(REPOSITORY)
    for svc in VERSIONED:
        settings, _ = _pod_settings(docs, svc, tmp_path)
        repository = getattr(settings, svc).repository
        assert str(repository.path) == "/var/lib/textserve/repository", svc
        assert str(repository.routing_file) == ROUTING_FILE, svc
    embedding, _ = _pod_settings(docs, "embedding", tmp_path)
    assert embedding.embedding.repository.poll_interval_s == 15
    assert embedding.embedding.repository.model_name == "all-MiniLM-L6-v2"
    classifier, _ = _pod_settings(docs, "classifier", tmp_path)
    assert classifier.classifier.repository.version_policy == "specific"
    assert list(classifier.classifier.repository.specific_versions) == ["1", "2"]


AUTH = {"global": {"auth": {"enabled": True, "existingSecret": "textserve-auth", "adminTokensKey": "admin"}}}


def test_admin_tokens_reach_the_grpc_services_only() -> None:
    """The control RPCs need an admin token: the key is mounted beside the tokens, not in the gateway."""
    docs = documents(render(AUTH))
    for svc in ("tokenizer", *VERSIONED):
        deployment = workload(docs, svc)
        env = env_of(container(deployment))
        prefix = f"TEXTSERVE_{svc.upper()}__SERVER__AUTH__"
        assert env[prefix + "ADMIN_TOKENS_FILE"] == "/etc/textserve/auth/admin"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert {"key": "admin", "path": "admin"} in volumes["auth"]["secret"]["items"]
    gateway = workload(docs, "gateway")
    assert not [name for name in env_of(container(gateway)) if "ADMIN" in name]
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert "admin" not in {item["key"] for item in volumes["auth"]["secret"]["items"]}
    without = documents(render({"global": {"auth": {"enabled": True, "existingSecret": "textserve-auth"}}}))
    assert "TEXTSERVE_EMBEDDING__SERVER__AUTH__ADMIN_TOKENS_FILE" not in env_of(
        container(workload(without, "embedding"))
    )


def test_admin_tokens_file_loads_as_the_setting(tmp_path: Path) -> None:
    """Depends on the server side of issue 14 (server.auth.admin_tokens_file)."""
    from tests.chart.test_config import _pod_settings

    settings, _ = _pod_settings(documents(render(AUTH)), "classifier", tmp_path)
    assert str(settings.classifier.server.auth.admin_tokens_file) == "/etc/textserve/auth/admin"


def test_notes_tell_where_the_weights_live() -> None:
    notes = scenario_notes(REPOSITORY)
    for svc in VERSIONED:
        assert f"ConfigMap {RELEASE}-textserve-{svc}-routing" in notes
    assert "textserve models list --address localhost:50052" in notes
    assert "Model versions" not in scenario_notes(Scenario("default"))
