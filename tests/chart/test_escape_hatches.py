"""Escape hatches operators expect: extra volumes and mounts, init containers, sidecars,
envFrom, pod labels, per-service pull policy and extra arguments, on every component."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.chart.conftest import COMPONENTS, KUBE_VERSIONS, container, documents, render, workload

SIDECAR = {"name": "log-shipper", "image": "fluent/fluent-bit:3.1", "args": ["--quiet"]}
INIT = {"name": "wait-for-secrets", "image": "busybox:1.36", "command": ["true"]}
VOLUME = {"name": "extra-ca", "configMap": {"name": "corporate-ca"}}
MOUNT = {"name": "extra-ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}
ENV_FROM = [{"configMapRef": {"name": "proxy-settings"}}]
HATCHES: dict[str, Any] = {
    "podLabels": {"team": "search", "app.kubernetes.io/component": "hijacked"},
    "extraArgs": ["--log-level", "DEBUG"],
    "envFrom": ENV_FROM,
    "extraVolumes": [VOLUME],
    "extraVolumeMounts": [MOUNT],
    "initContainers": [INIT],
    "sidecars": [SIDECAR],
    "image": {"pullPolicy": "Always"},
}


def _values(svc: str) -> dict[str, Any]:
    if svc == "gateway":
        return {"gateway": HATCHES, "global": {"podLabels": {"team": "platform", "cost": "ml"}}}
    return {"services": {svc: HATCHES}, "global": {"podLabels": {"team": "platform", "cost": "ml"}}}


@pytest.mark.parametrize("svc", COMPONENTS)
def test_every_hatch_reaches_the_pod(svc: str) -> None:
    docs = documents(render(_values(svc)))
    deployment = workload(docs, svc)
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    ctr = container(deployment)
    assert pod["metadata"]["labels"]["team"] == "search", "a service's label wins over the global one"
    assert pod["metadata"]["labels"]["cost"] == "ml"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == svc, "selector labels stay"
    assert ctr["args"] == ["serve", svc, "--log-level", "DEBUG"]
    assert ctr["envFrom"] == ENV_FROM
    assert ctr["imagePullPolicy"] == "Always"
    assert MOUNT in ctr["volumeMounts"] and VOLUME in spec["volumes"]
    assert spec["initContainers"] == [INIT]
    assert [c["name"] for c in spec["containers"]] == [f"textserve-{svc}", "log-shipper"]
    others = [workload(docs, other) for other in COMPONENTS if other != svc]
    assert all(container(d)["imagePullPolicy"] == "IfNotPresent" for d in others)
    for kube_version in KUBE_VERSIONS:
        kubernetes_validate.validate(deployment, kube_version, strict=True)
