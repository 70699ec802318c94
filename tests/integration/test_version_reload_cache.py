"""Unloading the one version of a service without a repository and loading it again keeps the
response cache working (lifecycle/): the cache belongs to the service, not to the version, so
an entry written before the unload is read after the reload, with no cache error. Embedding,
classifier and generation, over the in-process cache (whose close drops every entry: the bug this
guards against lost them all) and over a real Redis, on real gRPC servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import pytest
from textserve.classifier.app import ClassifierApp
from textserve.classifier.config import ClassifierServiceConfig
from textserve.core.cache import build_cache
from textserve.core.config import CacheConfig, ModelConfig
from textserve.core.metrics import REGISTRY
from textserve.embedding.app import EmbeddingApp
from textserve.generation.app import GenerationApp
from textserve.generation.config import GenerationServiceConfig
from textserve.transport.server import ServiceHost
from textserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

from tests.lifecycle_support import list_versions, states
from tests.redis_server import RedisServer, own_redis
from tests.support import embedding_config, loopback_server, model_config, start_host

SERVICES = ("embedding", "classifier", "generation")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from own_redis()


@pytest.fixture(scope="module", params=["memory", "redis"])
async def host(
    request: pytest.FixtureRequest, redis_server: RedisServer, onnx_cache_dir: object
) -> AsyncIterator[ServiceHost]:
    backend = request.param

    def cache(service: str) -> object:
        url = redis_server.url if backend == "redis" else "redis://127.0.0.1:6379/0"
        config = CacheConfig(backend=backend, url=url, key_prefix=f"reload-{backend}:", timeout_ms=2000)
        return build_cache(config, service)

    apps = [
        EmbeddingApp(embedding_config(), cache("embedding")),  # type: ignore[arg-type]
        ClassifierApp(
            ClassifierServiceConfig(server=loopback_server(), model=model_config()),
            cache("classifier"),  # type: ignore[arg-type]
        ),
        GenerationApp(
            GenerationServiceConfig(
                server=loopback_server(), model=ModelConfig(path="builtin:random", backend="torch")
            ),
            cache("generation"),  # type: ignore[arg-type]
        ),
    ]
    started = await start_host(apps)
    yield started
    await started.stop(grace=1.0)


def cache_errors(service: str) -> float:
    total = 0.0
    for family in REGISTRY.collect():
        if family.name != "textserve_cache_errors":
            continue
        for sample in family.samples:
            if sample.name == "textserve_cache_errors_total" and sample.labels.get("service") == service:
                total += sample.value
    return total


async def cached_call(service: str, channel: grpc.aio.Channel) -> tuple[bool, str]:
    """One call that the cache may answer: whether it did, and the model's name."""
    if service == "embedding":
        embedded = await embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(
            embedding_pb2.EmbedRequest(texts=["reloaded and still cached"]), timeout=30
        )
        assert embedded.model.version == "1"
        return embedded.usage.cached_texts == 1, embedded.model.name
    if service == "classifier":
        classified = await classifier_pb2_grpc.ClassifierServiceStub(channel).Classify(
            classifier_pb2.ClassifyRequest(texts=["reloaded and still cached"]), timeout=30
        )
        assert classified.model.version == "1"
        return classified.usage.cached_texts == 1, classified.model.name
    generated = await generation_pb2_grpc.GenerationServiceStub(channel).Generate(
        generation_pb2.GenerateRequest(
            prompt="reloaded and still cached", params=generation_pb2.SamplingParams(max_new_tokens=4)
        ),
        timeout=30,
    )
    assert generated.model.version == "1"
    return generated.usage.cached_texts == 1, generated.model.name


@pytest.mark.parametrize("service", SERVICES)
async def test_cache_survives_unload_and_reload_of_the_one_version(host: ServiceHost, service: str) -> None:
    app = next(a for a in host.apps if a.name == service)
    flush: Callable[[], Awaitable[None]] = app.service.cache.flush  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port_of(service)}") as channel:
        _, name = await cached_call(service, channel)
        await flush()
        assert (await cached_call(service, channel))[0]
        assert (await list_versions(channel)).model == name  # the versions are listed under the served name
        control = models_pb2_grpc.ModelControlStub(channel)
        errors = cache_errors(service)
        await control.UnloadVersion(models_pb2.UnloadVersionRequest(version="1"), timeout=60)
        assert states(await list_versions(channel)) == {"1": "UNAVAILABLE"}
        await control.LoadVersion(models_pb2.LoadVersionRequest(version="1"), timeout=60)
        assert states(await list_versions(channel)) == {"1": "READY"}
        assert (await cached_call(service, channel))[0]
        assert cache_errors(service) == errors
