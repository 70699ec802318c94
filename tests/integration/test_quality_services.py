"""Model quality wired into the services: feedback and live accuracy, payload-log privacy, drift.

Real servers on loopback: a zero-shot classifier (in-process MiniLM) whose response cache
and feedback store live in a real Redis of this module's own, the gateway's /v1/feedback in
front of it, and an embedding service with drift detection against a reference of SST-2
movie-review embeddings. Metrics are read from a real /metrics endpoint. Texts and labels
are SST-2 and CoNLL-2003 from ../shared/data (the tests skip when it is absent).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import accuracy_score, recall_score
from textserve.classifier.config import ClassifierServiceConfig
from textserve.core import metrics
from textserve.core.cache import build_cache
from textserve.core.config import CacheConfig
from textserve.quality.config import DriftConfig, FeedbackConfig, QualityConfig
from textserve.quality.reference import Reference, save_reference
from textserve.transport.server import ServiceHost
from textserve.v1 import classifier_pb2, classifier_pb2_grpc, embedding_pb2, embedding_pb2_grpc

from tests.gateway_support import base_url, running_gateway
from tests.redis_server import RedisServer, own_redis
from tests.shared_data import conll_sentences, sst2
from tests.support import embedding_config, loopback_server, model_config, start_host

FEEDBACK = classifier_pb2.FeedbackResponse
SENTIMENT = {0: "negative", 1: "positive"}
PREFIX = f"textserve-test-quality-{uuid.uuid4().hex[:8]}:"


# --- metrics ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metrics_url() -> str:
    """A real /metrics endpoint over the process's registry (every service here writes to it)."""
    port = metrics.start_metrics_server("127.0.0.1", 0)
    return f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of every sample /metrics answers now."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [
        (s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
    ]


def total(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    return sum(
        value
        for sample, have, value in scrape(url)
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


def value(url: str, name: str, **labels: str) -> float | None:
    """The one sample of `name` with exactly these labels, or None."""
    for sample, have, found in scrape(url):
        if sample == name and have == labels:
            return found
    return None


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Polls `condition` until it holds; fails after `timeout_s`."""
    stop_at = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > stop_at:
            pytest.fail(f"{what} did not happen within {timeout_s}s")
        time.sleep(0.05)


# --- the classifier behind Redis, and the gateway ---------------------------------------------
@dataclass
class Classifier:
    address: str
    gateway: str
    redis: RedisServer
    config: ClassifierServiceConfig
    workdir: Path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module runs with this empty directory as its working directory (relative paths land here)."""
    folder = tmp_path_factory.mktemp("cwd")
    before = Path.cwd()
    os.chdir(folder)
    yield folder
    os.chdir(before)


@pytest.fixture(scope="module")
def redis_of_module() -> Iterator[RedisServer]:
    """A redis-server of this module's own, so that every key in it is one these services wrote."""
    yield from own_redis()


@pytest.fixture(scope="module")
async def classifier(redis_of_module: RedisServer, workdir: Path) -> AsyncIterator[Classifier]:
    """Zero-shot sentiment classifier, response cache and feedback store in Redis (the payload
    log is off, as by default), and a gateway forwarding /v1/feedback to it."""
    from textserve.classifier.app import ClassifierApp

    cache = CacheConfig(backend="redis", url=redis_of_module.url, key_prefix=PREFIX, timeout_ms=2000)
    config = ClassifierServiceConfig(
        server=loopback_server(),
        model=model_config(),
        quality=QualityConfig(feedback=FeedbackConfig(enabled=True, key_prefix=PREFIX + "feedback:")),
    )
    host: ServiceHost = await start_host(
        [ClassifierApp(config, build_cache(cache, "classifier"), cache_config=cache)]
    )
    address = f"127.0.0.1:{host.port_of('classifier')}"
    async with running_gateway(classifier_address=address) as gateway:
        yield Classifier(address, base_url(gateway), redis_of_module, config, workdir)
    await host.stop(grace=1.0)


async def classify(
    stub: classifier_pb2_grpc.ClassifierServiceStub, texts: list[str], request_id: str | None
) -> tuple[classifier_pb2.ClassifyResponse, str]:
    """Classifies; returns the response and the x-request-id the service answered with."""
    metadata = (("x-request-id", request_id),) if request_id else None
    call = stub.Classify(classifier_pb2.ClassifyRequest(texts=texts), metadata=metadata, timeout=60)
    response = await call
    answered = dict(await call.initial_metadata())
    return response, str(answered["x-request-id"])


async def bounded(coroutines: list, limit: int = 16) -> list:  # type: ignore[type-arg]
    """Runs the coroutines with at most `limit` at once; results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(coroutine):  # type: ignore[no-untyped-def]
        async with gate:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


async def test_live_accuracy_after_500_feedbacks_equals_sklearn(
    classifier: Classifier, metrics_url: str
) -> None:
    rows = sst2("dev")[:500]
    texts = [text for _, text in rows]
    truth = [SENTIMENT[label] for label, _ in rows]
    async with (
        grpc.aio.insecure_channel(classifier.address) as channel,
        httpx.AsyncClient(base_url=classifier.gateway, timeout=60) as http,
    ):
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        before = total(metrics_url, "textserve_predictions_total", service="classifier")
        # Request 0 sends no x-request-id: the service makes one up and answers with it.
        answers = await bounded(
            [classify(stub, [text], None if i == 0 else f"acc-{i}") for i, text in enumerate(texts)]
        )
        ids = [request_id for _, request_id in answers]
        assert re.fullmatch(r"[0-9a-f]{32}", ids[0]) and ids[1:] == [f"acc-{i}" for i in range(1, 500)]
        predictions = [response.classifications[0].top_label for response, _ in answers]
        model = answers[0][0].model
        key = {"service": "classifier", "model": model.name, "version": model.revision}
        assert total(metrics_url, "textserve_predictions_total", service="classifier") - before == 500

        async def grpc_feedback(i: int, label: str) -> int:
            reply = await stub.Feedback(
                classifier_pb2.FeedbackRequest(request_id=ids[i], text_index=0, label=label), timeout=30
            )
            return int(reply.result)

        async def http_feedback(i: int, label: str) -> int:
            reply = await http.post("/v1/feedback", json={"request_id": ids[i], "index": 0, "label": label})
            assert reply.status_code == 200, reply.text
            return {"joined": FEEDBACK.RESULT_JOINED, "duplicate": FEEDBACK.RESULT_DUPLICATE}[
                reply.json()["result"]
            ]

        joined_before = total(metrics_url, "textserve_feedback_total", result="joined", **key)
        # Half the feedback through gRPC, half through the gateway's HTTP route.
        results = await bounded(
            [(grpc_feedback if i % 2 else http_feedback)(i, truth[i]) for i in range(500)]
        )
        assert results == [FEEDBACK.RESULT_JOINED] * 500
        expected = accuracy_score(truth, predictions)
        assert value(metrics_url, "textserve_live_accuracy", **key) == pytest.approx(expected, abs=1e-12)
        assert value(metrics_url, "textserve_live_window_pairs", **key) == 500
        recall = recall_score(
            truth, predictions, labels=["negative", "positive"], average=None, zero_division=0
        )
        for label, expected_recall in zip(["negative", "positive"], recall, strict=True):
            found = value(metrics_url, "textserve_live_recall", label=label, **key)
            assert found == pytest.approx(expected_recall, abs=1e-12)

        # Duplicates (here with the opposite label, by both routes) are answered, not counted.
        duplicate_before = total(metrics_url, "textserve_feedback_total", result="duplicate", **key)
        flipped = {"positive": "negative", "negative": "positive"}
        again = await bounded(
            [(grpc_feedback if i % 2 else http_feedback)(i, flipped[truth[i]]) for i in range(40)]
        )
        assert again == [FEEDBACK.RESULT_DUPLICATE] * 40
        assert value(metrics_url, "textserve_live_accuracy", **key) == pytest.approx(expected, abs=1e-12)
        assert value(metrics_url, "textserve_live_window_pairs", **key) == 500
        assert total(metrics_url, "textserve_feedback_total", result="joined", **key) - joined_before == 500
        assert (
            total(metrics_url, "textserve_feedback_total", result="duplicate", **key) - duplicate_before == 40
        )
        correct = sum(p == t for p, t in zip(predictions, truth, strict=True))
        assert total(metrics_url, "textserve_feedback_correct_total", **key) >= correct


async def test_unknown_ids_are_not_found_over_grpc_and_404_over_http(classifier: Classifier) -> None:
    async with (
        grpc.aio.insecure_channel(classifier.address) as channel,
        httpx.AsyncClient(base_url=classifier.gateway, timeout=60) as http,
    ):
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        _, known = await classify(
            stub, ["A gorgeous, witty film.", "Dull and far too long."], "known-2-texts"
        )
        for request_id, index in (("never-sent", 0), (known, 2)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Feedback(
                    classifier_pb2.FeedbackRequest(request_id=request_id, text_index=index, label="positive"),
                    timeout=30,
                )
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
            reply = await http.post(
                "/v1/feedback", json={"request_id": request_id, "index": index, "label": "positive"}
            )
            assert reply.status_code == 404 and reply.json()["error"]["type"] == "not_found_error", reply.text
        # A label the classifier does not have is bad input, naming the field.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Feedback(
                classifier_pb2.FeedbackRequest(request_id=known, text_index=0, label="sarcastic"), timeout=30
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "label" in caught.value.details()
        reply = await http.post("/v1/feedback", json={"request_id": known, "index": 0, "label": "sarcastic"})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "label", reply.text
    async with running_gateway() as bare, httpx.AsyncClient(base_url=base_url(bare), timeout=10) as http:
        reply = await http.post("/v1/feedback", json={"request_id": "x", "index": 0, "label": "positive"})
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "endpoint_not_configured"


def _every_stored_byte(client: object) -> list[bytes]:
    """Every key of the Redis and every value in it, whatever its type."""
    import redis

    assert isinstance(client, redis.Redis)
    found: list[bytes] = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        kind = client.type(key).decode()
        if kind == "string":
            found.append(client.get(key) or b"")
        elif kind == "list":
            found.extend(client.lrange(key, 0, -1))
        elif kind == "hash":
            for field, item in client.hgetall(key).items():
                found += [field, item]
        elif kind == "set":
            found.extend(client.smembers(key))
        elif kind == "zset":
            found.extend(member for member, _ in client.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            for _, fields in client.xrange(key):
                for field, item in fields.items():
                    found += [field, item]
        else:
            pytest.fail(f"unexpected Redis type {kind} of {key!r}")
    return found


async def test_with_the_payload_log_off_no_text_reaches_redis_or_disk(
    classifier: Classifier, metrics_url: str
) -> None:
    assert not classifier.config.quality.payload_log.enabled  # the default
    texts = [text for _, text in sst2("dev")[500:540]]
    logged_before = total(metrics_url, "textserve_payload_log_records_total")
    async with grpc.aio.insecure_channel(classifier.address) as channel:
        stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        ids = [f"privacy-{i}" for i in range(4)]
        await bounded([classify(stub, texts[i * 10 : (i + 1) * 10], ids[i]) for i in range(4)])
    client = classifier.redis.client()
    # The predictions are kept by background writes: wait until every one is in Redis.
    wanted = [
        f"{PREFIX}feedback:p:{request_id}:{index}".encode() for request_id in ids for index in range(10)
    ]
    await asyncio.to_thread(
        wait_for, lambda: client.exists(*wanted) == len(wanted), 30, "the predictions reaching Redis"
    )
    stored = await asyncio.to_thread(_every_stored_byte, client)
    assert len(stored) > 80  # keys and values of cache entries, predictions, the index list
    for text in texts:
        needle = text.encode()
        assert not any(needle in item for item in stored), f"request text in Redis: {text!r}"
    # Nor on disk: nothing was written in the working directory, nor at the payload log's path.
    assert list(classifier.workdir.iterdir()) == []
    assert not classifier.config.quality.payload_log.path.exists()
    assert total(metrics_url, "textserve_payload_log_records_total") == logged_before


# --- the embedding service with drift detection -----------------------------------------------
async def embed_all(address: str, texts: list[str], normalize: bool, batch: int = 50) -> np.ndarray:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        vectors: list[list[float]] = []
        for start in range(0, len(texts), batch):
            reply = await stub.Embed(
                embedding_pb2.EmbedRequest(texts=texts[start : start + batch], normalize=normalize),
                timeout=120,
            )
            vectors.extend(list(item.values) for item in reply.embeddings)
    return np.asarray(vectors, dtype=np.float32)


async def test_news_after_movie_reviews_sets_the_embedding_drift_flag(
    embedding_address: str, metrics_url: str, tmp_path: Path
) -> None:
    from textserve.embedding.app import EmbeddingApp

    rng = np.random.default_rng(0)
    train = sst2("train")
    reference_texts = [train[i][1] for i in rng.choice(len(train), 300, replace=False)]
    news = conll_sentences("eng.testa")
    window = [news[i] for i in rng.choice(len(news), 200, replace=False)]
    # The reference: unit embeddings of movie reviews, made by an embedding service with drift off.
    reference_file = tmp_path / "reference.npz"
    save_reference(
        reference_file, Reference(vectors=await embed_all(embedding_address, reference_texts, True))
    )

    drift = DriftConfig(
        enabled=True, reference_file=reference_file, window_size=200, test_every_n=200, test_every_s=0
    )
    config = embedding_config(cache_enabled=False, quality=QualityConfig(drift=drift))
    host = await start_host([EmbeddingApp(config)])
    try:
        address = f"127.0.0.1:{host.port_of('embedding')}"
        async with grpc.aio.insecure_channel(address) as channel:
            info = await embedding_pb2_grpc.EmbeddingServiceStub(channel).Info(embedding_pb2.InfoRequest())
        key = {"service": "embedding", "model": info.model.name, "version": info.model.revision}
        norms_before = total(metrics_url, "textserve_embedding_norm_count", **key)
        tokens_before = total(metrics_url, "textserve_text_tokens_count", **key)
        # Raw vectors asked for: the drift window still gets unit vectors, as the reference has.
        raw = await embed_all(address, window, normalize=False)
        assert np.linalg.norm(raw, axis=1).min() > 1.5  # MiniLM's pooled vectors are not unit length

        def flagged() -> bool:
            return value(metrics_url, "textserve_drift_detected", detector="mmd", **key) == 1.0

        await asyncio.to_thread(wait_for, flagged, 60, "textserve_drift_detected{detector=mmd} == 1")
        p_value = value(metrics_url, "textserve_drift_p_value", detector="mmd", **key)
        assert p_value is not None and p_value < drift.significance
        assert total(metrics_url, "textserve_embedding_norm_count", **key) - norms_before == 200
        assert total(metrics_url, "textserve_text_tokens_count", **key) - tokens_before == 200
        assert (
            total(metrics_url, "textserve_drift_test_cpu_seconds_count", service="embedding", detector="mmd")
            >= 1
        )
    finally:
        await host.stop(grace=1.0)
