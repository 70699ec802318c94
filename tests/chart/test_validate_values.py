"""textserve.validateValues: cross-field rules fail the render once, listing every broken rule."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmRenderError

from tests.chart.conftest import render

CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "classifier needs embedding",
        {"services": {"embedding": {"enabled": False}}},
        "services.classifier: useEmbeddingService=true calls the embedding service over gRPC, "
        "but services.embedding.enabled=false",
    ),
    (
        "embedding needs tokenizer",
        {"services": {"embedding": {"useTokenizerService": True}, "tokenizer": {"enabled": False}}},
        "services.embedding: useTokenizerService=true calls the tokenizer service over gRPC, "
        "but services.tokenizer.enabled=false",
    ),
    (
        "gateway needs embedding or generation",
        {
            "services": {
                "embedding": {"enabled": False},
                "generation": {"enabled": False},
                "classifier": {"useEmbeddingService": False},
            }
        },
        "gateway: enabled=true, but both services.embedding.enabled and "
        "services.generation.enabled are false",
    ),
    (
        "nothing enabled",
        {
            "services": {
                name: {"enabled": False} for name in ("tokenizer", "embedding", "classifier", "generation")
            },
            "gateway": {"enabled": False},
        },
        "every service and the gateway are disabled",
    ),
    (
        "redis backend without redis",
        {"global": {"redis": {"deploy": False}}},
        "global.redis: global.cache.backend=redis needs Redis",
    ),
    (
        "both redis sources",
        {"global": {"redis": {"url": "redis://elsewhere:6379/0"}}},
        'global.redis: deploy=true and url="redis://elsewhere:6379/0" are both set',
    ),
    (
        "redis tls on the chart's redis",
        {"global": {"redis": {"tls": {"enabled": True, "existingSecret": "ca"}}}},
        "global.redis: tls.enabled=true is for an external Redis",
    ),
    (
        "tls without a secret",
        {"global": {"tls": {"enabled": True}}},
        "global.tls: enabled=true needs existingSecret",
    ),
    (
        "auth without a secret",
        {"global": {"auth": {"enabled": True}}},
        "global.auth: enabled=true needs existingSecret",
    ),
    (
        "gpu on the cpu image",
        {"services": {"generation": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}},
        'services.generation: resources.limits asks for nvidia.com/gpu=1 but the image variant is "cpu"',
    ),
    (
        "cuda device without a gpu",
        {"services": {"embedding": {"model": {"device": "cuda"}, "image": {"variant": "cuda"}}}},
        "services.embedding: model.device=cuda but resources.limits has no nvidia.com/gpu",
    ),
    (
        "hpa bounds",
        {"services": {"embedding": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}},
        "services.embedding.autoscaling: minReplicas=5 is greater than maxReplicas=2",
    ),
    (
        "pdb blocking drains",
        {"services": {"tokenizer": {"pdb": {"minAvailable": 1}}}},
        "services.tokenizer.pdb: minAvailable=1 with 1 replica(s) would block every voluntary eviction",
    ),
    (
        "grace period too short for the drain",
        {"services": {"generation": {"config": {"server": {"grace_period_s": 120}}}}},
        "services.generation: terminationGracePeriodSeconds=60 is shorter than preStopSleepSeconds=5 + "
        "config.server.grace_period_s=120",
    ),
    (
        "gateway grace period too short",
        {"gateway": {"config": {"grace_period_s": 40}}},
        "gateway: terminationGracePeriodSeconds=30 is shorter than preStopSleepSeconds=5 + "
        "config.grace_period_s=40",
    ),
    (
        "ingress without hosts",
        {"gateway": {"ingress": {"enabled": True, "hosts": []}}},
        "gateway.ingress: enabled=true needs at least one entry in hosts",
    ),
]


@pytest.mark.parametrize(("values", "message"), [(v, m) for _, v, m in CASES], ids=[c[0] for c in CASES])
def test_rule_fails_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmRenderError) as caught:
        render(values)
    assert "VALUES VALIDATION" in str(caught.value)
    assert message in str(caught.value)


def test_every_broken_rule_is_listed_at_once() -> None:
    with pytest.raises(HelmRenderError) as caught:
        render({"global": {"tls": {"enabled": True}, "auth": {"enabled": True}, "redis": {"deploy": False}}})
    text = str(caught.value)
    for message in ("global.tls:", "global.auth:", "global.redis:"):
        assert message in text


def test_fixing_the_rule_renders() -> None:
    render({"services": {"embedding": {"enabled": False}, "classifier": {"useEmbeddingService": False}}})
    render(
        {
            "services": {
                "generation": {
                    "config": {"server": {"grace_period_s": 120}},
                    "terminationGracePeriodSeconds": 130,
                }
            }
        }
    )
