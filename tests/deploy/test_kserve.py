"""deploy/kserve: the ClusterServingRuntimes run textserve's model services as KServe runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from textserve.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = REPO / "deploy" / "kserve" / "textserve-runtimes.yaml"
EXAMPLE = REPO / "deploy" / "kserve" / "inferenceservice-example.yaml"


def _runtimes() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(RUNTIMES.read_text()) if doc]


def test_runtimes_speak_the_open_inference_protocol_on_one_grpc_port() -> None:
    runtimes = _runtimes()
    assert {r["metadata"]["name"] for r in runtimes} == {"textserve-embedding", "textserve-generation"}
    for runtime in runtimes:
        assert runtime["kind"] == "ClusterServingRuntime"
        spec = runtime["spec"]
        assert spec["protocolVersions"] == ["grpc-v2"]
        (ctr,) = spec["containers"]
        svc = ctr["args"][1]
        assert ctr["name"] == "kserve-container" and ctr["args"] == ["serve", svc]
        assert [f["name"] for f in spec["supportedModelFormats"]] == [f"textserve-{svc}"]
        (port,) = ctr["ports"]
        env = {item["name"]: item["value"] for item in ctr["env"]}
        assert port["name"] == "h2c" and env[f"TEXTSERVE_{svc.upper()}__SERVER__PORT"] == str(
            port["containerPort"]
        )
        settings = getattr(
            load_settings(environ={k: v for k, v in env.items() if k.startswith("TEXTSERVE_")}), svc
        )
        assert str(settings.model.path) == "/mnt/models", "KServe's storage initializer puts the model there"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "check"},
            "spec": {"containers": [ctr]},
        }
        kubernetes_validate.validate(pod, "1.37.0", strict=True)


def test_the_example_names_a_runtime_format() -> None:
    service = yaml.safe_load(EXAMPLE.read_text())
    formats = {f["name"] for r in _runtimes() for f in r["spec"]["supportedModelFormats"]}
    assert service["spec"]["predictor"]["model"]["modelFormat"]["name"] in formats
