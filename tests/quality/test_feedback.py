"""Feedback join and live accuracy, with a real SST-2 classifier and a real redis-server.

The predictions are those of a TF-IDF + logistic-regression sentiment classifier trained on
SST-2 train, on SST-2 dev sentences; feedback is the gold label. Both stores (memory LRU,
Redis) are checked the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, recall_score
from textserve.core.errors import NotFound
from textserve.core.metrics import REGISTRY
from textserve.quality.feedback import (
    FeedbackJoiner,
    FeedbackResult,
    LiveWindow,
    MemoryPredictionStore,
    Prediction,
    PredictionStore,
    RedisPredictionStore,
)

from tests.redis_server import RedisServer
from tests.shared_data import sst2

NAMES = ("negative", "positive")
TEXTS_PER_REQUEST = 5


@dataclass(frozen=True)
class Served:
    """500 predictions of a real classifier on SST-2 dev, with their gold labels."""

    predictions: list[Prediction]
    truth: list[str]


@pytest.fixture(scope="module")
def served() -> Served:
    train, dev = sst2("train"), sst2("dev")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2)
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(vectorizer.fit_transform([text for _, text in train]), [label for label, _ in train])
    rows = dev[:500]
    probabilities = classifier.predict_proba(vectorizer.transform([text for _, text in rows]))
    model, version = "sst2-tfidf", f"v-{uuid.uuid4().hex[:6]}"
    predictions = []
    for position, scores in enumerate(probabilities):
        request_id, index = f"req-{position // TEXTS_PER_REQUEST}", position % TEXTS_PER_REQUEST
        top = int(scores.argmax())
        predictions.append(Prediction(request_id, index, model, version, NAMES[top], float(scores[top])))
    return Served(predictions, [NAMES[label] for label, _ in rows])


def counter(result: str, model: str = "", version: str = "", service: str = "classifier") -> float:
    labels = {"service": service, "model": model, "version": version, "result": result}
    return REGISTRY.get_sample_value("textserve_feedback_total", labels) or 0.0


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[PredictionStore]:
    if request.param == "memory":
        yield MemoryPredictionStore(max_entries=10_000, ttl_s=3600)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
    prefix = f"test-feedback-{uuid.uuid4().hex[:8]}:"
    yield RedisPredictionStore(client, key_prefix=prefix, max_entries=10_000, ttl_s=3600)
    await client.aclose()


async def test_live_accuracy_after_500_predictions_equals_sklearn(
    store: PredictionStore, served: Served
) -> None:
    joiner = FeedbackJoiner(store, service="classifier", window_size=1000)
    first = served.predictions[0]
    key = {"service": "classifier", "model": first.model, "version": first.version}
    joined_before = counter("joined", first.model, first.version)
    correct_before = REGISTRY.get_sample_value("textserve_feedback_correct_total", key) or 0.0
    for start in range(0, len(served.predictions), TEXTS_PER_REQUEST):
        await joiner.record(served.predictions[start : start + TEXTS_PER_REQUEST])
    for prediction, truth in zip(served.predictions, served.truth, strict=True):
        assert await joiner.feedback(prediction.request_id, prediction.index, truth) is FeedbackResult.JOINED

    predicted = [prediction.label for prediction in served.predictions]
    expected = accuracy_score(served.truth, predicted)
    live = joiner.live(first.model, first.version)
    assert live is not None and live.pairs == 500
    assert live.accuracy == pytest.approx(expected, abs=1e-12)
    assert 0.6 < expected < 0.95  # a real classifier, neither trivial nor perfect
    recalls = recall_score(served.truth, predicted, labels=list(NAMES), average=None)
    assert live.recall == pytest.approx(dict(zip(NAMES, recalls, strict=True)), abs=1e-12)

    assert REGISTRY.get_sample_value("textserve_live_accuracy", key) == pytest.approx(expected, abs=1e-12)
    for name, recall in zip(NAMES, recalls, strict=True):
        gauge = REGISTRY.get_sample_value("textserve_live_recall", {**key, "label": name})
        assert gauge == pytest.approx(recall)
    assert counter("joined", first.model, first.version) - joined_before == 500
    correct = REGISTRY.get_sample_value("textserve_feedback_correct_total", key)
    assert correct is not None and correct - correct_before == round(expected * 500)


async def test_unknown_ids_are_not_found_and_duplicates_count_once(store: PredictionStore) -> None:
    joiner = FeedbackJoiner(store, service="classifier")
    version = uuid.uuid4().hex[:6]
    await joiner.record([Prediction("known", 0, "m", version, "positive", 0.9)])
    unknown_before = counter("unknown")
    with pytest.raises(NotFound):
        await joiner.feedback("never-served", 0, "positive")
    with pytest.raises(NotFound):
        await joiner.feedback("known", 1, "positive")  # right request, wrong text index
    assert counter("unknown") - unknown_before == 2

    assert await joiner.feedback("known", 0, "negative") is FeedbackResult.JOINED
    assert await joiner.feedback("known", 0, "negative") is FeedbackResult.DUPLICATE
    assert await joiner.feedback("known", 0, "positive") is FeedbackResult.DUPLICATE
    live = joiner.live("m", version)
    assert live is not None and live.pairs == 1 and live.accuracy == 0.0
    assert counter("joined", "m", version) == 1
    assert counter("duplicate", "m", version) == 2


async def test_memory_store_stays_within_its_bound_and_expires() -> None:
    now = [0.0]
    store = MemoryPredictionStore(max_entries=100, ttl_s=60, clock=lambda: now[0])
    joiner = FeedbackJoiner(store, service="classifier")
    for request in range(100):
        await joiner.record([Prediction(f"r{request}", i, "m", "1", "a") for i in range(10)])
        assert len(store) <= 100
    assert len(store) == 100
    with pytest.raises(NotFound):
        await joiner.feedback("r0", 0, "a")  # evicted: the oldest went first
    assert await joiner.feedback("r99", 9, "a") is FeedbackResult.JOINED
    now[0] = 61.0
    with pytest.raises(NotFound):
        await joiner.feedback("r99", 8, "a")  # expired


async def test_redis_store_stays_within_its_bound(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    prefix = f"test-bound-{uuid.uuid4().hex[:8]}:"
    store = RedisPredictionStore(client, key_prefix=prefix, max_entries=100, ttl_s=30)
    joiner = FeedbackJoiner(store, service="classifier")
    try:
        await joiner.record([Prediction("early", 0, "m", "1", "a")])
        assert await joiner.feedback("early", 0, "a") is FeedbackResult.JOINED
        for request in range(100):
            await joiner.record([Prediction(f"r{request}", i, "m", "1", "a") for i in range(10)])
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        marker = f"{prefix}p:".encode()
        predictions = [key for key in keys if key.startswith(marker) and not key.endswith(b":fb")]
        assert len(predictions) == 100
        assert len(keys) <= 101  # the predictions and the index list (the evicted one's :fb went with it)
        assert await client.llen(store.index_key) == 100
        assert 0 < await client.ttl(store.key("r99", 9)) <= 30
        with pytest.raises(NotFound):
            await joiner.feedback("early", 0, "a")
        with pytest.raises(NotFound):
            await joiner.feedback("r0", 0, "a")
        assert await joiner.feedback("r99", 9, "a") is FeedbackResult.JOINED
    finally:
        await client.aclose()


async def test_a_store_failure_never_reaches_the_request() -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    store = RedisPredictionStore(client, key_prefix="x:", max_entries=10, ttl_s=10)
    await FeedbackJoiner(store, service="classifier").record([Prediction("r", 0, "m", "1", "a")])
    await client.aclose()


def test_live_window_slides() -> None:
    window = LiveWindow(10)
    pairs = [("a", "a"), ("a", "b"), ("b", "b"), ("b", "a")] * 5 + [("a", "a")] * 3
    for truth, predicted in pairs:
        window.add(truth, predicted)
    last = pairs[-10:]
    stats = window.stats()
    assert stats.pairs == 10
    assert stats.accuracy == accuracy_score([t for t, _ in last], [p for _, p in last])
    expected = recall_score([t for t, _ in last], [p for _, p in last], labels=["a", "b"], average=None)
    assert stats.recall == pytest.approx({"a": expected[0], "b": expected[1]})
