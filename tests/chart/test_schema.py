"""values.schema.json: rejects typos and bad types with a clear message, and matches textserve's config."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from helm_python import HelmValuesError
from pydantic import BaseModel
from textserve.core.config import BatcherConfig, ModelConfig
from textserve.generation.config import GenerationServiceConfig

from tests.chart.conftest import CHART_DIR, COMPONENTS, GRPC_SERVICES, SCENARIOS, Scenario, chart, render

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _service_schema(svc: str) -> dict[str, Any]:
    if svc == "gateway":
        return _resolve(SCHEMA["properties"]["gateway"])
    return _resolve(SCHEMA["properties"]["services"]["properties"][svc])


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _reject(values: dict[str, Any]) -> str:
    with pytest.raises(HelmValuesError) as caught:
        render(values)
    return str(caught.value)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_shipped_values_pass_the_schema(scenario: Scenario) -> None:
    chart().validate_schema(scenario.values())


def test_a_typo_under_a_service_is_rejected_with_its_path() -> None:
    message = _reject({"services": {"embedding": {"replcas": 2}}})
    assert "/services/embedding" in message and "'replcas' not allowed" in message


def test_a_typo_in_a_nested_section_is_rejected() -> None:
    message = _reject({"services": {"generation": {"batcher": {"maxRunningSequence": 8}}}})
    assert "/services/generation/batcher" in message and "'maxRunningSequence' not allowed" in message
    message = _reject({"global": {"redis": {"deploi": True}}})
    assert "/global/redis" in message and "'deploi' not allowed" in message


def test_an_unknown_service_is_rejected() -> None:
    message = _reject({"services": {"reranker": {"enabled": True}}})
    assert "/services" in message and "'reranker' not allowed" in message


def test_a_bad_type_is_rejected_with_what_was_wanted() -> None:
    message = _reject({"services": {"embedding": {"replicas": "two"}}})
    assert "/services/embedding/replicas" in message and "got string, want integer" in message


def test_bounds_and_choices_are_enforced() -> None:
    message = _reject({"services": {"embedding": {"batcher": {"maxBatchSize": 0}}}})
    assert "/services/embedding/batcher/maxBatchSize" in message and "minimum" in message
    message = _reject({"services": {"embedding": {"model": {"device": "gpu"}}}})
    assert "/services/embedding/model/device" in message and "'auto', 'cpu', 'cuda'" in message
    message = _reject({"global": {"image": {"variant": "rocm"}}})
    assert "/global/image/variant" in message
    message = _reject({"services": {"tokenizer": {"port": 70000}}})
    assert "/services/tokenizer/port" in message


def test_sections_a_service_does_not_have_are_rejected() -> None:
    assert "'batcher' not allowed" in _reject({"services": {"tokenizer": {"batcher": {"maxBatchSize": 8}}}})
    assert "'model' not allowed" in _reject({"gateway": {"model": {"path": "/m"}}})
    assert "'ingress' not allowed" in _reject({"services": {"embedding": {"ingress": {"enabled": True}}}})


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            found.append((path, node))
        for key, child in node.items():
            found.extend(_walk(child, f"{path}/{key}"))
    return found


OPEN_OBJECTS = {"/$defs/extraEnv/items"}
"""Kubernetes objects passed through as they are (EnvVar): only their required keys are described."""


def test_every_object_is_closed_and_documents_its_keys() -> None:
    for path, node in _walk(SCHEMA):
        closed = path not in OPEN_OBJECTS
        assert node.get("additionalProperties") is (not closed), (
            f"{path} must set additionalProperties: false"
        )
        for key, child in node["properties"].items():
            assert child.get("description"), f"{path}/{key} has no description"


def test_every_service_is_closed_and_switchable() -> None:
    for svc in COMPONENTS:
        schema = _service_schema(svc)
        assert schema["additionalProperties"] is False
        assert "enabled" in schema["required"]
        common = {"enabled", "replicas", "resources", "config", "nodeSelector", "tolerations", "affinity"}
        assert common | {"autoscaling", "pdb"} <= set(schema["properties"]), svc
    for svc in GRPC_SERVICES:
        assert "model" in _service_schema(svc)["properties"]
    for svc in ("embedding", "classifier", "generation"):
        assert "batcher" in _service_schema(svc)["properties"]


def test_values_yaml_and_schema_agree_on_keys() -> None:
    """Every key in values.yaml is in the schema (and so documented)."""

    def check(values: Any, schema: dict[str, Any], path: str) -> None:
        schema = _resolve(schema)
        if not isinstance(values, dict) or "properties" not in schema:
            return
        for key, value in values.items():
            assert key in schema["properties"], f"values.yaml {path}/{key} is not in the schema"
            check(value, schema["properties"][key], f"{path}/{key}")

    check(chart().values, SCHEMA, "")


def _field_schema(model: type[BaseModel], field: str) -> dict[str, Any]:
    return dict(model.model_json_schema()["properties"][field])


@pytest.mark.parametrize(
    ("definition", "model", "left_out"),
    [
        ("batcher", BatcherConfig, set()),
        ("model", ModelConfig, {"onnx_cache_dir"}),
        ("generationBatcher", GenerationServiceConfig, None),
    ],
)
def test_schema_sections_match_textserve_config(
    definition: str, model: type[BaseModel], left_out: set[str] | None
) -> None:
    """Chart keys are the camelCase of config fields, with the same types, bounds and choices."""
    section = SCHEMA["$defs"][definition]["properties"]
    fields = {_snake(key): key for key in section}
    if left_out is not None:
        expected = set(model.model_fields) - left_out
        assert set(fields) == expected, (
            f"{definition}: schema keys {sorted(fields)} != config fields {sorted(expected)}"
        )
    for snake, key in fields.items():
        assert snake in model.model_fields, f"{definition}.{key}: {model.__name__} has no field {snake}"
        want = _field_schema(model, snake)
        got = section[key]
        for bound in ("minimum", "maximum", "enum"):
            if bound in want:
                assert got.get(bound) == want[bound], (
                    f"{definition}.{key}: {bound} {got.get(bound)} != {want[bound]}"
                )
        if want.get("type") in ("integer", "boolean", "string"):
            assert got["type"] == want["type"], f"{definition}.{key}"
        elif want.get("type") == "number":
            assert got["type"] in ("number", "integer")
