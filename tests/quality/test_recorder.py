"""QualityRecorder: the request-path calls never raise or wait, writes are bounded, feedback joins."""

from __future__ import annotations

import numpy as np
import pytest
from textserve.core.config import CacheConfig
from textserve.core.errors import NotFound
from textserve.core.metrics import REGISTRY
from textserve.quality.config import FeedbackConfig, QualityConfig
from textserve.quality.feedback import FeedbackResult
from textserve.quality.recorder import QualityRecorder


def dropped(service: str) -> float:
    value = REGISTRY.get_sample_value(
        "textserve_quality_writes_dropped_total", {"service": service, "kind": "prediction"}
    )
    return value or 0.0


async def test_feedback_off_answers_not_found_and_keeps_nothing() -> None:
    recorder = QualityRecorder(QualityConfig(), service="recorder-off")
    await recorder.start()
    try:
        assert not recorder.needs_request_id and recorder.joiner is None
        recorder.classified("m", "1", ["a", "b"], [0.9, 0.6], request_id="r1", texts=["x", "y"])
        with pytest.raises(NotFound, match=r"quality\.feedback\.enabled"):
            await recorder.feedback("r1", 0, "a")
    finally:
        await recorder.close()


async def test_predictions_join_once_and_a_bad_call_is_logged_not_raised() -> None:
    recorder = QualityRecorder(QualityConfig(feedback=FeedbackConfig(enabled=True)), service="recorder-join")
    await recorder.start()
    try:
        recorder.classified("m", "1", ["a", "b"], [0.9, 0.6], request_id="r1")
        recorder.classified("m", "1", ["a"], [0.9, 0.1], request_id="r2")  # lengths differ: logged only
        recorder.embedded("m", "1", np.array([1.0, 2.0]), [3, 4], None)
        assert await recorder.feedback("r1", 1, "a") is FeedbackResult.JOINED
        assert await recorder.feedback("r1", 1, "b") is FeedbackResult.DUPLICATE
        with pytest.raises(NotFound):
            await recorder.feedback("r2", 0, "a")
        live = recorder.live("m", "1")
        assert live is not None and (live.pairs, live.accuracy) == (1, 0.0)
    finally:
        await recorder.close()


async def test_writes_beyond_max_pending_are_dropped_and_counted() -> None:
    config = QualityConfig(feedback=FeedbackConfig(enabled=True), max_pending_writes=3)
    recorder = QualityRecorder(config, service="recorder-bound")
    await recorder.start()
    before = dropped("recorder-bound")
    try:
        for i in range(10):  # no await in between: none of the writes has run yet
            recorder.classified("m", "1", ["a"], [0.9], request_id=f"r{i}")
        assert dropped("recorder-bound") - before == 7
        assert await recorder.feedback("r2", 0, "a") is FeedbackResult.JOINED
        with pytest.raises(NotFound):
            await recorder.feedback("r3", 0, "a")
    finally:
        await recorder.close()


def test_auto_backend_follows_the_cache_and_redis_needs_its_settings() -> None:
    feedback = QualityConfig(feedback=FeedbackConfig(enabled=True))
    assert QualityRecorder(feedback, service="s").feedback_backend == "memory"
    assert QualityRecorder(feedback, service="s", cache=CacheConfig()).feedback_backend == "memory"
    redis_cache = CacheConfig(backend="redis")
    assert QualityRecorder(feedback, service="s", cache=redis_cache).feedback_backend == "redis"
    explicit = QualityConfig(feedback=FeedbackConfig(enabled=True, backend="redis"))
    with pytest.raises(ValueError, match="Redis"):
        QualityRecorder(explicit, service="s")
