"""The ConfigMap + environment each pod gets is a valid textserve configuration, with the right values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from textserve.core.config import ConfigError
from textserve.settings import Settings, load_settings

from tests.chart.conftest import (
    DEFAULT_PORTS,
    METRICS_PORT,
    NAMESPACE,
    RELEASE,
    Scenario,
    container,
    documents,
    enabled_components,
    env_of,
    merged_values,
    of_kind,
    render,
    scenario_docs,
    workload,
)


def _pod_settings(docs: list[dict[str, Any]], svc: str, tmp_path: Path) -> tuple[Settings, dict[str, Any]]:
    """Loads the settings a pod of `svc` would: its ConfigMap file, then its environment."""
    deployment = workload(docs, svc)
    ctr = container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_map = next(
        c
        for c in of_kind(docs, "ConfigMap")
        if c["metadata"]["name"] == volumes["config"]["configMap"]["name"]
    )
    text = config_map["data"]["textserve.yaml"]
    raw = yaml.safe_load(text)
    config_file = tmp_path / f"{svc}.yaml"
    config_file.write_text(text)
    environ = {
        name: value if isinstance(value, str) else "secret-from-kubernetes"
        for name, value in env_of(ctr).items()
        if name.startswith("TEXTSERVE_")
    }
    environ["TEXTSERVE_CONFIG_FILE"] = str(config_file)
    return load_settings(environ=environ), raw


def _headless(svc: str) -> str:
    return f"{RELEASE}-textserve-{svc}-headless.{NAMESPACE}.svc.cluster.local:{DEFAULT_PORTS[svc]}"


def test_every_pod_config_loads(scenario: Scenario, tmp_path: Path) -> None:
    docs = scenario_docs(scenario)
    values = merged_values(scenario)
    for svc in enabled_components(scenario):
        settings, raw = _pod_settings(docs, svc, tmp_path)
        assert set(raw) == {"log", "metrics", "cache", svc}, "a pod's file holds only its own section"
        assert settings.metrics.port == METRICS_PORT and settings.metrics.enabled
        auth = values["global"]["auth"]["enabled"]
        if svc == "gateway":
            assert settings.gateway.port == DEFAULT_PORTS["gateway"]
            for backend in ("embedding", "generation"):
                enabled = values["services"][backend]["enabled"]
                address = getattr(settings.gateway, f"{backend}_address")
                assert address == (_headless(backend) if enabled else ""), "empty switches the endpoint off"
            if auth:
                assert str(settings.gateway.client_token_file) == "/etc/textserve/auth/clientToken"
            if values["global"]["tls"]["enabled"]:
                assert settings.gateway.client.tls.enabled
            continue
        section = getattr(settings, svc)
        assert section.server.port == DEFAULT_PORTS[svc]
        tls = values["global"]["tls"]
        assert section.server.tls.enabled == tls["enabled"]
        assert section.server.health_port == (tls["healthPort"] if tls["enabled"] else None)
        if tls["enabled"]:
            assert str(section.server.tls.cert_file) == "/etc/textserve/tls/tls.crt"
            assert section.server.tls.require_client_cert == tls["requireClientCert"]
            assert (
                section.client.tls.enabled and str(section.client.tls.ca_file) == "/etc/textserve/tls/ca.crt"
            )
        assert section.server.auth.enabled == auth
        if auth:
            assert str(section.server.auth.tokens_file) == "/etc/textserve/auth/tokens"
            assert str(section.server.auth.client_token_file) == "/etc/textserve/auth/clientToken"
        if svc != "tokenizer":
            assert str(section.model.onnx_cache_dir) == "/var/cache/textserve/onnx"
        age = {**values["global"]["connectionAge"], **values["services"][svc].get("connectionAge", {})}
        assert section.server.max_connection_age_ms == age["maxAgeSeconds"] * 1000
        assert section.server.max_connection_age_grace_ms == age["graceSeconds"] * 1000


def test_cache_settings(scenario: Scenario, tmp_path: Path) -> None:
    docs = scenario_docs(scenario)
    values = merged_values(scenario)["global"]
    for svc in enabled_components(scenario):
        settings, _ = _pod_settings(docs, svc, tmp_path)
        assert settings.cache.backend == values["cache"]["backend"]
        assert settings.cache.ttl_s == values["cache"]["ttlSeconds"]
        if values["cache"]["backend"] != "redis":
            continue
        if values["redis"]["deploy"]:
            assert (
                settings.cache.url
                == f"redis://{RELEASE}-textserve-redis.{NAMESPACE}.svc.cluster.local:6379/0"
            )
        else:
            assert settings.cache.url == values["redis"]["url"]
        if svc == "gateway":
            # The gateway calls the services and caches nothing: no Redis secrets in it.
            assert settings.cache.password_file is None and settings.cache.tls_ca_file is None
            continue
        if values["redis"]["auth"]["existingSecret"]:
            assert str(settings.cache.password_file) == "/etc/textserve/redis/password"
            mounts = {m["mountPath"] for m in container(workload(docs, svc))["volumeMounts"]}
            assert "/etc/textserve/redis" in mounts
        if values["redis"]["tls"]["enabled"]:
            assert str(settings.cache.tls_ca_file) == "/etc/textserve/redis-tls/ca.crt"


def test_values_reach_the_service_sections(tmp_path: Path) -> None:
    """camelCase chart values become the snake_case settings they name; `config` wins."""
    docs = scenario_docs(Scenario("ci-cpu", ("ci/cpu-values.yaml",)))
    embedding, _ = _pod_settings(docs, "embedding", tmp_path)
    assert embedding.embedding.batcher.max_batch_size == 64
    assert embedding.embedding.batcher.max_queue_delay_ms == 2
    assert embedding.embedding.batcher.group_by_length is False, "false must override the default true"
    assert embedding.embedding.limits.max_texts_per_request == 512
    assert embedding.embedding.tokenizer_address == _headless("tokenizer")
    assert embedding.embedding.model.intra_op_threads == 2, "derived from resources.limits.cpu"
    classifier, _ = _pod_settings(docs, "classifier", tmp_path)
    assert classifier.classifier.embedding_address == _headless("embedding")
    assert classifier.classifier.temperature == 0.1
    generation, _ = _pod_settings(docs, "generation", tmp_path)
    assert generation.generation.max_new_tokens_default == 32
    assert generation.generation.server.grace_period_s == 30

    gpu_docs = scenario_docs(Scenario("values-gpu", ("values-gpu.yaml",)))
    generation, raw = _pod_settings(gpu_docs, "generation", tmp_path)
    assert "batcher" not in raw["generation"], "generation's batcher maps onto its scheduler fields"
    assert generation.generation.max_running_sequences == 64
    assert generation.generation.kv_budget_tokens == 262144
    assert generation.generation.model.device == "cuda"
    assert generation.generation.model.dtype == "bfloat16"
    assert generation.generation.model.path == "/models/qwen2.5-1.5b-instruct"
    tokenizer, raw = _pod_settings(gpu_docs, "tokenizer", tmp_path)
    assert [m.path for m in tokenizer.tokenizer.models] == ["/models/bge-base-en-v1.5"]


def test_connection_age_reaches_every_grpc_server(tmp_path: Path) -> None:
    """Defect 6: servers close connections after a maximum age, so clients re-resolve."""
    docs = scenario_docs(Scenario("default"))
    tokenizer, _ = _pod_settings(docs, "tokenizer", tmp_path)
    assert tokenizer.tokenizer.server.max_connection_age_ms == 300_000
    assert tokenizer.tokenizer.server.max_connection_age_grace_ms == 30_000
    generation, _ = _pod_settings(docs, "generation", tmp_path)
    assert generation.generation.server.max_connection_age_grace_ms == 600_000, "long streams"
    docs = documents(render({"global": {"connectionAge": {"maxAgeSeconds": 0}}}))
    embedding, _ = _pod_settings(docs, "embedding", tmp_path)
    assert embedding.embedding.server.max_connection_age_ms == 0


def test_gateway_without_generation(tmp_path: Path) -> None:
    docs = documents(render({"services": {"generation": {"enabled": False}}}))
    settings, _ = _pod_settings(docs, "gateway", tmp_path)
    assert settings.gateway.generation_address == ""
    assert settings.gateway.embedding_address == _headless("embedding")


def test_service_addresses_follow_service_discovery(tmp_path: Path) -> None:
    docs = documents(render({"global": {"serviceDiscovery": "service"}}))
    settings, _ = _pod_settings(docs, "classifier", tmp_path)
    assert (
        settings.classifier.embedding_address
        == f"{RELEASE}-textserve-embedding.{NAMESPACE}.svc.cluster.local:50052"
    )


def test_every_model_and_batcher_key_renders_to_a_valid_setting(tmp_path: Path) -> None:
    """Each camelCase key of the schema converts (Helm's snakecase) to a field textserve accepts."""
    model = {
        "path": "/models/m",
        "name": "m",
        "revision": "r1",
        "backend": "onnxruntime",
        "device": "cpu",
        "maxLength": 256,
        "pooling": "cls",
        "intraOpThreads": 3,
        "dtype": "float32",
    }
    batcher = {
        "maxBatchSize": 7,
        "maxBatchTokens": 1_000_000,
        "maxQueueDelayMs": 1.5,
        "maxQueueSize": 1_000_000,
        "groupByLength": False,
        "groupLengthRatio": 3.5,
        "workers": 2,
    }
    generation = {
        "maxRunningSequences": 9,
        "maxWaitingSequences": 999_999,
        "kvBudgetTokens": 100_000_000,
        "maxPrefillTokens": 10_000_000,
        "maxBatchedTokens": 300,
        "prefixCacheTokens": 0,
        "prefixBlockTokens": 32,
    }
    values = {
        "services": {
            "embedding": {"model": model, "batcher": batcher},
            "generation": {"model": {**model, "backend": "torch"}, "batcher": generation},
        }
    }
    docs = documents(render(values))
    settings, _ = _pod_settings(docs, "embedding", tmp_path)
    got = settings.embedding
    assert (got.model.path, got.model.name, got.model.revision, got.model.backend) == (
        "/models/m",
        "m",
        "r1",
        "onnxruntime",
    )
    assert (got.model.max_length, got.model.pooling, got.model.intra_op_threads, got.model.dtype) == (
        256,
        "cls",
        3,
        "float32",
    )
    assert got.batcher.model_dump() == {
        "max_batch_size": 7,
        "max_batch_tokens": 1_000_000,
        "max_queue_delay_ms": 1.5,
        "max_queue_size": 1_000_000,
        "group_by_length": False,
        "group_length_ratio": 3.5,
        "workers": 2,
    }
    settings, _ = _pod_settings(docs, "generation", tmp_path)
    assert (
        settings.generation.max_running_sequences,
        settings.generation.max_waiting_sequences,
        settings.generation.kv_budget_tokens,
        settings.generation.max_prefill_tokens,
        settings.generation.max_batched_tokens,
        settings.generation.prefix_cache_tokens,
        settings.generation.prefix_block_tokens,
    ) == (9, 999_999, 100_000_000, 10_000_000, 300, 0, 32)


def test_a_bad_free_form_config_is_caught_by_textserve(tmp_path: Path) -> None:
    """`config` is free-form in the chart; textserve rejects a typo at start-up, naming it."""
    docs = documents(render({"services": {"embedding": {"config": {"batcher": {"max_batch_sise": 3}}}}}))
    with pytest.raises(ConfigError, match=r"embedding\.batcher\.max_batch_sise"):
        _pod_settings(docs, "embedding", tmp_path)


def test_ner_release_serves_a_token_classifier_on_its_own(tmp_path: Path) -> None:
    """ci/ner-values.yaml: only the classifier, of kind token_classification, on its own model."""
    scenario = Scenario("ci-ner", ("ci/ner-values.yaml",))
    assert enabled_components(scenario) == ["classifier"]
    settings, _ = _pod_settings(scenario_docs(scenario), "classifier", tmp_path)
    classifier = settings.classifier
    assert classifier.kind == "token_classification" and classifier.embedding_address == ""
    assert classifier.model.path == "/models/ner"
    assert (classifier.entities.aggregation_strategy, classifier.entities.stride) == ("first", 32)
