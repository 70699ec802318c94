"""Model weights delivery (per-service volume, fetch init container, shared memory), KEDA
ScaledObjects, and the GPU-aware rollout default."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helm_python import HelmRenderError

from tests.chart.conftest import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    Scenario,
    component_of,
    container,
    documents,
    of_kind,
    render,
    scenario_docs,
    workload,
)

WEIGHTS = Scenario("ci-init-weights", ("ci/init-weights-values.yaml",))
KEDA = Scenario("ci-keda", ("ci/keda-values.yaml",))


def test_the_fetch_init_container_fills_the_services_own_volume() -> None:
    docs = scenario_docs(WEIGHTS)
    generation = workload(docs, "generation")
    spec = generation["spec"]["template"]["spec"]
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == "fetch-model"
    assert fetch["command"][:2] == ["python", "/etc/textserve/fetch/fetch_model.py"]
    assert fetch["command"][fetch["command"].index("--sha256") + 1].startswith("9f86d0")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-storage"]["persistentVolumeClaim"] == {"claimName": "textserve-generation-weights"}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    mounts = {m["name"]: m for m in container(generation)["volumeMounts"]}
    assert mounts["model-storage"] == {"name": "model-storage", "mountPath": "/models/own", "readOnly": True}
    assert mounts["shm"]["mountPath"] == "/dev/shm"
    embedding = workload(docs, "embedding")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in embedding["volumes"]}["model-storage"]["emptyDir"] == {"sizeLimit": "4Gi"}
    assert "initContainers" not in workload(docs, "tokenizer")["spec"]["template"]["spec"]
    (script,) = [c for c in of_kind(docs, "ConfigMap") if component_of(c) == "fetch"]
    assert script["data"]["fetch_model.py"] == (CHART_DIR / "files" / "fetch_model.py").read_text()


def test_fetch_needs_a_uri_or_a_command() -> None:
    values = {"services": {"embedding": {"modelStorage": {"fetch": {"enabled": True}}}}}
    with pytest.raises(HelmRenderError, match=r"modelStorage\.fetch: enabled=true needs uri"):
        render(values)


def test_keda_replaces_the_hpa_and_queries_this_release() -> None:
    docs = scenario_docs(KEDA)
    objects = {component_of(o): o for o in of_kind(docs, "ScaledObject")}
    assert set(objects) == {"embedding", "generation"}
    embedding = objects["embedding"]["spec"]
    assert embedding["scaleTargetRef"]["name"] == f"{RELEASE}-textserve-embedding"
    assert embedding["fallback"] == {"failureThreshold": 3, "replicas": 2}
    (trigger,) = embedding["triggers"]
    query = trigger["metadata"]["query"]
    assert query == (
        f'sum(textserve_queue_depth{{namespace="{NAMESPACE}", release="{RELEASE}", service="embedding"}})'
    )
    assert objects["generation"]["spec"]["minReplicaCount"] == 0, "scale to zero"
    assert (
        "textserve_generation_waiting_sequences"
        in objects["generation"]["spec"]["triggers"][0]["metadata"]["query"]
    )
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    assert "replicas" not in workload(docs, "embedding")["spec"], "KEDA owns replicas"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"keda": {"enabled": True}, "autoscaling": {"enabled": True}},
            "keda.enabled and autoscaling.enabled",
        ),
        ({"keda": {"enabled": True, "minReplicaCount": 3, "maxReplicaCount": 2}}, "minReplicaCount=3"),
    ],
)
def test_keda_mistakes_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmRenderError, match=message):
        render({"services": {"embedding": values}})


def test_keda_needs_metrics() -> None:
    values = {
        "global": {"metrics": {"enabled": False}},
        "services": {"embedding": {"keda": {"enabled": True}}},
    }
    with pytest.raises(HelmRenderError, match=r"the Prometheus trigger needs global\.metrics\.enabled=true"):
        render(values)


def test_gpu_services_roll_without_a_surge_pod() -> None:
    limits = {"limits": {"nvidia.com/gpu": 1}}
    values = {"services": {"embedding": {"image": {"variant": "cuda"}, "resources": limits}}}
    docs = documents(render(values))
    assert workload(docs, "embedding")["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": 0,
        "maxUnavailable": 1,
    }
    assert "strategy" not in workload(docs, "tokenizer")["spec"], "CPU services keep the default"


# --- files/fetch_model.py ---------------------------------------------------------------
def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_model", CHART_DIR / "files" / "fetch_model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fetch_model", module)
    spec.loader.exec_module(module)
    return module


def _tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def served() -> Iterator[tuple[str, dict[str, bytes]]]:
    """An HTTP server on loopback serving the bytes put in the returned dict, by path."""
    content: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = content.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", content
    finally:
        server.shutdown()


def test_fetch_checks_the_checksum_extracts_and_skips_a_second_time(
    served: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    base, content = served
    archive = _tarball({"model/config.json": b"{}", "model/weights.bin": b"\x00" * 64})
    content["/m.tar.gz"] = archive
    script = _script()
    digest = hashlib.sha256(archive).hexdigest()
    dest = tmp_path / "weights"
    assert script.main(["--uri", f"{base}/m.tar.gz", "--dest", str(dest), "--sha256", "a" * 64]) == 1
    assert not (dest / "model").exists(), "a bad checksum extracts nothing"
    assert script.main(["--uri", f"{base}/m.tar.gz", "--dest", str(dest), "--sha256", digest]) == 0
    assert (dest / "model" / "weights.bin").read_bytes() == b"\x00" * 64
    del content["/m.tar.gz"]
    assert script.main(["--uri", f"{base}/m.tar.gz", "--dest", str(dest), "--sha256", digest]) == 0, "cached"


def test_fetch_refuses_archives_that_escape(served: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    base, content = served
    content["/evil.tar.gz"] = _tarball({"../outside.txt": b"x"})
    assert _script().main(["--uri", f"{base}/evil.tar.gz", "--dest", str(tmp_path / "w")]) == 1
    assert not (tmp_path / "outside.txt").exists()


def test_fetch_sends_other_schemes_to_a_tool_image(tmp_path: Path) -> None:
    assert _script().main(["--uri", "s3://bucket/model", "--dest", str(tmp_path)]) == 2
