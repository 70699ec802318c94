"""The Redis response cache end to end: a real redis-server, real gRPC on loopback, the real model.

Hit and miss (one MGET and one pipelined write per request), coalescing, TTL expiry,
keys that change with the model revision and pooling, corrupted entries, password and TLS,
and failing open: Redis out of memory, paused (slow), and killed in the middle of a load
and restarted, with zero failed requests.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from textserve.core.cache import ResponseCache, build_cache
from textserve.core.config import CacheConfig
from textserve.core.metrics import REGISTRY
from textserve.core.redis_cache import RedisCacheBackend
from textserve.embedding.app import EmbeddingApp
from textserve.embedding.service import EmbeddingService, EmbedParams
from textserve.transport.server import ServiceHost
from textserve.v1 import embedding_pb2, embedding_pb2_grpc

from tests.pki import make_pki
from tests.redis_server import RedisServer
from tests.support import embedding_config, model_config, service_total, start_host

DIMENSIONS = 384


def metric(name: str, service: str = "embedding") -> float:
    return service_total(name, service)


def calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def unique_texts(count: int, label: str = "text") -> list[str]:
    tag = uuid.uuid4().hex[:10]
    return [f"{label} {i} about caching embeddings {tag}" for i in range(count)]


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    stop_at = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > stop_at:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


class Cached:
    """A running embedding service whose response cache is Redis."""

    def __init__(self, host: ServiceHost, app: EmbeddingApp, prefix: str) -> None:
        self.host = host
        self.app = app
        self.prefix = prefix
        self.address = f"127.0.0.1:{host.port_of('embedding')}"

    @property
    def cache(self) -> ResponseCache:
        assert self.app.service.cache is not None
        return self.app.service.cache

    async def embed(self, texts: Sequence[str], **fields: bool) -> embedding_pb2.EmbedResponse:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            return await stub.Embed(embedding_pb2.EmbedRequest(texts=list(texts), **fields), timeout=60)


def vectors(response: embedding_pb2.EmbedResponse) -> np.ndarray:
    return np.asarray([list(item.values) for item in response.embeddings], dtype=np.float32)


async def start_cached(url: str, prefix: str, **cache: float | str) -> Cached:
    config = CacheConfig(backend="redis", url=url, key_prefix=prefix, **cache)  # type: ignore[arg-type]
    app = EmbeddingApp(embedding_config(), build_cache(config, "embedding"))
    host = await start_host([app])
    return Cached(host, app, prefix)


@pytest.fixture(scope="module")
async def cached(redis_server: RedisServer, onnx_cache_dir: Path) -> AsyncIterator[Cached]:
    """An embedding service caching in the session's redis-server (generous timeout: loaded CI)."""
    service = await start_cached(redis_server.url, f"test-{uuid.uuid4().hex[:8]}:", timeout_ms=2000.0)
    yield service
    await service.host.stop(grace=1.0)


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis_server.client()
    yield connection
    connection.close()


def keys_under(client: redis.Redis, prefix: str) -> set[bytes]:
    return set(client.scan_iter(match=f"{prefix}*", count=1000))


# --- hit, miss, and what a request costs Redis -------------------------------------------
async def test_miss_then_hit_with_one_read_and_one_write_per_request(
    cached: Cached, client: redis.Redis
) -> None:
    texts = unique_texts(5)
    mget, sets = calls(client, "mget"), calls(client, "set")
    hits, misses = metric("textserve_cache_hits_total"), metric("textserve_cache_misses_total")
    reads = metric("textserve_cache_read_duration_seconds_count")
    writes = metric("textserve_cache_write_duration_seconds_count")
    before = keys_under(client, cached.prefix)

    first = await cached.embed(texts)
    await cached.cache.flush()
    assert first.usage.cached_texts == 0
    assert calls(client, "mget") == mget + 1 and calls(client, "set") == sets + 5
    new_keys = keys_under(client, cached.prefix) - before
    assert len(new_keys) == 5
    for key in new_keys:
        assert len(client.get(key) or b"") == DIMENSIONS * 4  # packed float32, not JSON
        assert 0 < client.ttl(key) <= cached.cache.config.ttl_s

    second = await cached.embed(texts)
    assert second.usage.cached_texts == 5
    np.testing.assert_array_equal(vectors(second), vectors(first))
    assert calls(client, "mget") == mget + 2 and calls(client, "set") == sets + 5
    assert metric("textserve_cache_hits_total") == hits + 5
    assert metric("textserve_cache_misses_total") == misses + 5
    assert metric("textserve_cache_read_duration_seconds_count") - reads == 2  # one MGET per request
    assert metric("textserve_cache_write_duration_seconds_count") - writes >= 1  # the misses' write-back


async def test_normalize_is_applied_after_the_cache(cached: Cached) -> None:
    text = unique_texts(1)
    raw = vectors(await cached.embed(text))[0]
    await cached.cache.flush()
    unit = await cached.embed(text, normalize=True)
    assert unit.usage.cached_texts == 1
    np.testing.assert_allclose(vectors(unit)[0], raw / np.linalg.norm(raw), rtol=1e-6, atol=1e-7)


async def test_skip_cache_neither_reads_nor_writes(cached: Cached, client: redis.Redis) -> None:
    text = unique_texts(1)
    await cached.embed(text)
    await cached.cache.flush()
    mget, sets = calls(client, "mget"), calls(client, "set")
    response = await cached.embed(text, skip_cache=True)
    await cached.cache.flush()
    assert response.usage.cached_texts == 0
    assert (calls(client, "mget"), calls(client, "set")) == (mget, sets)


async def test_identical_inputs_in_flight_are_computed_once(cached: Cached) -> None:
    service = cached.app.service
    labels = {"service": "embedding", "model": "all-MiniLM-L6-v2", "version": "1"}
    computed = REGISTRY.get_sample_value("textserve_batch_size_sum", labels) or 0.0
    coalesced = metric("textserve_cache_coalesced_total")
    same, other = unique_texts(2)

    within = await cached.embed([same, same, same])  # duplicates inside one request
    assert len(within.embeddings) == 3
    across = await asyncio.gather(*(service.embed(EmbedParams([other])) for _ in range(8)))

    assert (REGISTRY.get_sample_value("textserve_batch_size_sum", labels) or 0.0) == computed + 2
    assert metric("textserve_cache_coalesced_total") == coalesced + 2 + 7
    np.testing.assert_array_equal(vectors(within)[0], vectors(within)[2])
    assert all(np.array_equal(result.vectors[0], across[0].vectors[0]) for result in across)
    assert service.encoder.in_flight == 0


# --- what a key depends on -----------------------------------------------------------------
async def test_entries_expire_after_the_ttl(redis_server: RedisServer, client: redis.Redis) -> None:
    prefix = f"test-ttl-{uuid.uuid4().hex[:8]}:"
    config = CacheConfig(backend="redis", url=redis_server.url, key_prefix=prefix, ttl_s=1, timeout_ms=2000.0)
    cache = ResponseCache(RedisCacheBackend(config), config, "unit-ttl")
    key = cache.key("model", "rev", "embed", b"ids")
    cache.put_many([(key, b"\x00" * 16)])
    await cache.flush()
    assert 0 < client.pttl(key) <= 1000
    assert await cache.get_many([key]) == [b"\x00" * 16]
    await wait_until(lambda: client.exists(key) == 0, "the entry to expire", timeout_s=10)
    assert await cache.get_many([key]) == [None]
    await cache.close()


@pytest.mark.parametrize("change", [{"revision": "v2"}, {"pooling": "cls"}], ids=["revision", "pooling"])
async def test_another_revision_or_pooling_misses(
    cached: Cached, client: redis.Redis, change: dict[str, str]
) -> None:
    """A replica with another model revision (or pooling) shares Redis but never reads A's vectors."""
    texts = unique_texts(2)
    original = await cached.embed(texts)
    await cached.cache.flush()
    before = keys_under(client, cached.prefix)
    config = embedding_config(model=model_config(**change))
    other = EmbeddingService(config, build_cache(cached.cache.config, "embedding"))
    await other.start()
    try:
        first = await other.embed(EmbedParams(texts))
        assert first.cached == [False, False]
        assert other.cache is not None
        await other.cache.flush()
        assert len(keys_under(client, cached.prefix) - before) == 2  # its own entries
        assert (await other.embed(EmbedParams(texts))).cached == [True, True]
    finally:
        await other.stop()
    again = await cached.embed(texts)
    assert again.usage.cached_texts == 2
    np.testing.assert_array_equal(vectors(again), vectors(original))


@pytest.mark.parametrize(
    "garbage",
    [b"not a vector", b"\x00" * (DIMENSIONS * 4 - 4), np.full(DIMENSIONS, np.nan, "<f4").tobytes()],
    ids=["bytes", "short", "nan"],
)
async def test_corrupted_entry_is_ignored_and_overwritten(
    cached: Cached, client: redis.Redis, garbage: bytes
) -> None:
    text = unique_texts(1)
    before = keys_under(client, cached.prefix)
    original = vectors(await cached.embed(text))[0]
    await cached.cache.flush()
    (key,) = keys_under(client, cached.prefix) - before
    client.set(key, garbage)
    hits, misses = metric("textserve_cache_hits_total"), metric("textserve_cache_misses_total")

    response = await cached.embed(text)
    assert response.usage.cached_texts == 0
    assert metric("textserve_cache_hits_total") == hits  # an unreadable entry is a miss, not a hit
    assert metric("textserve_cache_misses_total") == misses + 1
    np.testing.assert_allclose(vectors(response)[0], original, rtol=1e-5, atol=1e-6)
    await cached.cache.flush()
    stored = np.frombuffer(client.get(key) or b"", dtype="<f4")
    np.testing.assert_allclose(stored, vectors(response)[0])
    assert (await cached.embed(text)).usage.cached_texts == 1


# --- password and TLS ------------------------------------------------------------------------
async def round_trip(url: str, **settings: object) -> list[bytes | None]:
    """Writes then reads one entry through a Redis cache (generous timeout: TLS set-up on loaded CI)."""
    config = CacheConfig.model_validate({"backend": "redis", "url": url, "timeout_ms": 2000.0, **settings})
    cache = ResponseCache(RedisCacheBackend(config), config, "unit-auth")
    key = cache.key(uuid.uuid4().hex)
    try:
        cache.put_many([(key, b"value")])
        await cache.flush()
        return await cache.get_many([key])
    finally:
        await cache.close()


async def test_password_from_a_file_and_a_wrong_password_fails_open(tmp_path: Path) -> None:
    server = RedisServer(password="s3cret-pass")
    server.start()
    try:
        secret = tmp_path / "redis-password"
        secret.write_text("s3cret-pass\n")
        assert await round_trip(server.url, password_file=secret) == [b"value"]
        errors = metric("textserve_cache_errors_total", "unit-auth")
        assert await round_trip(server.url.replace("//", "//:wrong@")) == [None]
        assert metric("textserve_cache_errors_total", "unit-auth") >= errors + 1
    finally:
        server.stop()


async def test_mutual_tls_with_password(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = RedisServer(
        password="tls-pass", tls_files=(pki.server.cert, pki.server.key, pki.ca), tls_client_certs=True
    )
    server.start()
    try:
        assert server.url.startswith("rediss://")
        client_cert = {"tls_cert_file": pki.client.cert, "tls_key_file": pki.client.key}
        assert await round_trip(server.url, password="tls-pass", tls_ca_file=pki.ca, **client_cert) == [
            b"value"
        ]
        # Without a client certificate, or trusting only the system CAs, the cache fails open.
        assert await round_trip(server.url, password="tls-pass", tls_ca_file=pki.ca) == [None]
        assert await round_trip(server.url, password="tls-pass", **client_cert) == [None]
    finally:
        server.stop()


# --- failing open ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def chaos(onnx_cache_dir: Path) -> AsyncIterator[tuple[Cached, RedisServer]]:
    """An embedding service on a redis-server of its own, which the tests pause, fill and kill."""
    server = RedisServer()
    server.start()
    service = await start_cached(
        server.url, "chaos:", timeout_ms=500.0, reconnect_backoff_min_s=0.05, reconnect_backoff_max_s=0.5
    )
    yield service, server
    await service.host.stop(grace=1.0)
    server.stop()


async def test_out_of_memory_redis_is_counted_and_never_fails_a_request(
    chaos: tuple[Cached, RedisServer],
) -> None:
    service, server = chaos
    client = server.client()
    errors, size = metric("textserve_cache_errors_total"), client.dbsize()
    client.config_set("maxmemory", 1)  # policy noeviction: every write is refused with OOM
    try:
        texts = unique_texts(4, "oom")
        response = await service.embed(texts)
        await service.cache.flush()
        assert len(response.embeddings) == 4 and response.usage.cached_texts == 0
        assert metric("textserve_cache_errors_total") >= errors + 1
        assert client.dbsize() == size
        assert isinstance(service.cache.backend, RedisCacheBackend)
        assert service.cache.backend.breaker.state == "closed"  # Redis answered: reads still go
        assert (await service.embed(texts)).usage.cached_texts == 0
    finally:
        client.config_set("maxmemory", 0)
    await service.embed(texts)
    await service.cache.flush()
    assert (await service.embed(texts)).usage.cached_texts == 4
    client.close()


async def test_slow_redis_times_out_and_the_cache_comes_back(chaos: tuple[Cached, RedisServer]) -> None:
    service, server = chaos
    texts = unique_texts(2, "slow")
    await service.embed(texts)
    await service.cache.flush()
    errors = metric("textserve_cache_errors_total")
    client = server.client()
    client.execute_command("CLIENT", "PAUSE", 2000, "ALL")  # every command waits 2 s (> timeout_ms)
    client.close()
    response = await service.embed(texts)
    assert len(response.embeddings) == 2 and response.usage.cached_texts == 0
    assert metric("textserve_cache_errors_total") >= errors + 1
    hits = metric("textserve_cache_hits_total")

    async def hit() -> bool:
        return (await service.embed(texts)).usage.cached_texts == 2

    stop_at = time.monotonic() + 30
    while not await hit():
        assert time.monotonic() < stop_at, "cache hits did not resume after Redis became fast again"
        await asyncio.sleep(0.1)
    assert metric("textserve_cache_hits_total") >= hits + 2


async def test_redis_killed_mid_load_and_restarted_with_zero_failed_requests(
    chaos: tuple[Cached, RedisServer],
) -> None:
    service, server = chaos
    pool = unique_texts(24, "chaos")
    failures: list[str] = []
    answered = 0
    stop = asyncio.Event()

    async def worker(seed: int, stub: embedding_pb2_grpc.EmbeddingServiceStub) -> None:
        nonlocal answered
        rng = random.Random(seed)
        while not stop.is_set():
            texts = rng.sample(pool, 3)
            try:
                response = await stub.Embed(embedding_pb2.EmbedRequest(texts=texts), timeout=60)
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
                continue
            assert len(response.embeddings) == 3
            answered += 1

    hits, errors = metric("textserve_cache_hits_total"), metric("textserve_cache_errors_total")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        workers = [asyncio.create_task(worker(seed, stub)) for seed in range(6)]
        try:
            await wait_until(
                lambda: metric("textserve_cache_hits_total") > hits + 20, "cache hits before the kill"
            )
            server.kill()
            killed_at = answered
            await wait_until(
                lambda: answered > killed_at + 20 and metric("textserve_cache_errors_total") > errors,
                "requests served while Redis is down",
            )
            errors_while_down = metric("textserve_cache_errors_total")
            server.start()
            restarted = metric("textserve_cache_hits_total")
            await wait_until(
                lambda: metric("textserve_cache_hits_total") > restarted + 20, "cache hits after the restart"
            )
        finally:
            stop.set()
            await asyncio.gather(*workers)
    assert failures == []
    assert errors_while_down > errors
    assert isinstance(service.cache.backend, RedisCacheBackend)
    assert service.cache.backend.breaker.state == "closed"
    client = server.client()
    assert keys_under(client, service.prefix)  # written again after the restart
    client.close()
