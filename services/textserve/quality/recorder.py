"""QualityRecorder: what a service calls after each prediction, and the lifecycle behind it.

It wires the transport-free parts of this package for one service: prediction statistics
(`metrics.record_classification` / `record_embeddings`), the `DriftMonitor` (when
`quality.drift.enabled`), the `FeedbackJoiner` with its store (when
`quality.feedback.enabled`) and the payload log (when `quality.payload_log.enabled`).

The request path calls `classified` or `embedded`: synchronous, O(batch) work, and never
raises (a failure is logged and the request goes on). Writes that need I/O (a prediction
kept for feedback, a payload-log record) run as background tasks in a set bounded by
`max_pending_writes`; when it is full, the write is dropped and counted
(textserve_quality_writes_dropped_total), so a slow Redis never holds a request.
`feedback` first waits (bounded) for this replica's predictions still being written, so
feedback sent right after its answer finds its prediction.

The feedback store is Redis when `feedback.backend` is `redis`, or `auto` with the response
cache on Redis; the payload log's redis sink uses the same connection settings
(`CacheConfig`: URL, password, TLS, timeouts). `start` opens that client, `close` drains
the pending writes (bounded), stops the monitor and closes the store, log and client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import numpy as np

from textserve.core.config import CacheConfig
from textserve.core.errors import BackendFailure, NotFound, TextserveError
from textserve.quality.config import QualityConfig
from textserve.quality.feedback import (
    FeedbackJoiner,
    FeedbackResult,
    LiveStats,
    MemoryPredictionStore,
    Prediction,
    PredictionStore,
    RedisPredictionStore,
)
from textserve.quality.metrics import QUALITY_WRITES_DROPPED, record_classification, record_embeddings
from textserve.quality.monitor import DriftMonitor, ModelKey, metrics_hook
from textserve.quality.payload_log import DisabledPayloadLog, PayloadLog, make_payload_log, sampled

log = logging.getLogger(__name__)

FEEDBACK_WAIT_S = 2.0
"""Longest time feedback waits for this replica's predictions still being written."""
CLOSE_WAIT_S = 2.0
"""Longest time `close` waits for pending writes before cancelling them."""


class QualityRecorder:
    """Prediction statistics, drift windows, the feedback join and the payload log of one service."""

    def __init__(self, config: QualityConfig, *, service: str, cache: CacheConfig | None = None) -> None:
        """`cache`: the response cache's settings, whose Redis the feedback store and payload log use."""
        self.config = config
        self.service = service
        self._cache = cache
        self.monitor = (
            DriftMonitor(config.drift, hooks=[metrics_hook(service)]) if config.drift.enabled else None
        )
        self.joiner: FeedbackJoiner | None = None
        self.payload_log: PayloadLog | DisabledPayloadLog = DisabledPayloadLog()
        self._redis: Any = None
        self._writes: set[asyncio.Task[Any]] = set()
        self._predictions: set[asyncio.Task[Any]] = set()
        if self._uses_redis and cache is None:
            raise ValueError(f"{service}: quality with Redis needs the cache's Redis settings")

    # --- configuration --------------------------------------------------------------------
    @property
    def feedback_backend(self) -> str:
        """Where predictions wait for feedback: memory or redis (auto resolved)."""
        backend = self.config.feedback.backend
        if backend == "auto":
            return "redis" if self._cache is not None and self._cache.backend == "redis" else "memory"
        return backend

    @property
    def _uses_redis(self) -> bool:
        payload = self.config.payload_log
        return (self.config.feedback.enabled and self.feedback_backend == "redis") or (
            payload.enabled and payload.sink == "redis"
        )

    @property
    def needs_request_id(self) -> bool:
        """True when predictions are kept by request id (feedback or payload log on)."""
        return self.config.feedback.enabled or self.config.payload_log.enabled

    @property
    def wants_vectors(self) -> bool:
        """True when `embedded` should be given unit vectors (drift detection is on)."""
        return self.monitor is not None

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Opens the Redis client (when used), the prediction store and the payload log."""
        if self._cache is not None and self._uses_redis:
            import redis.asyncio

            from textserve.core.redis_cache import connection_pool

            self._redis = redis.asyncio.Redis.from_pool(connection_pool(self._cache))
        feedback = self.config.feedback
        if feedback.enabled:
            store: PredictionStore
            if self.feedback_backend == "redis":
                store = RedisPredictionStore(
                    self._redis,
                    key_prefix=feedback.key_prefix,
                    max_entries=feedback.max_predictions,
                    ttl_s=feedback.ttl_s,
                )
            else:
                store = MemoryPredictionStore(feedback.max_predictions, feedback.ttl_s)
            self.joiner = FeedbackJoiner(store, service=self.service, window_size=feedback.window_size)
        self.payload_log = make_payload_log(
            self.config.payload_log, service=self.service, redis_client=self._redis
        )

    async def close(self) -> None:
        """Waits (bounded) for pending writes, then stops the monitor and closes everything."""
        if self._writes:
            _, late = await asyncio.wait(set(self._writes), timeout=CLOSE_WAIT_S)
            for task in late:
                task.cancel()
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.close)
        if self.joiner is not None:
            await self.joiner.close()
        await self.payload_log.close()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # --- the request path -----------------------------------------------------------------
    def classified(
        self,
        model: str,
        version: str,
        labels: Sequence[str],
        confidences: Sequence[float],
        *,
        request_id: str = "",
        texts: Sequence[str] = (),
        drift: bool = True,
    ) -> None:
        """After a Classify: the top label and score of each text. With `request_id`, the
        predictions are kept for feedback (and `texts` logged when sampled); `drift=False`
        keeps them out of the drift windows (a label set other than the default one)."""
        try:
            record_classification(self.service, model, version, labels, confidences)
            if drift and self.monitor is not None:
                self.monitor.observe_outputs(ModelKey(model, version), labels, confidences)
            if not request_id:
                return
            if self.joiner is not None:
                predictions = [
                    Prediction(request_id, index, model, version, label, float(confidence))
                    for index, (label, confidence) in enumerate(zip(labels, confidences, strict=True))
                ]
                self._spawn("prediction", self.joiner.record(predictions), self._predictions)
            payload = self.payload_log
            if isinstance(payload, PayloadLog) and texts and sampled(request_id, payload.sample_rate):
                outputs = [
                    {"label": label, "confidence": float(confidence)}
                    for label, confidence in zip(labels, confidences, strict=True)
                ]
                self._spawn("payload", payload.log_predictions(request_id, model, version, texts, outputs))
        except Exception:
            log.warning("quality recording failed", extra={"service": self.service}, exc_info=True)

    def embedded(
        self,
        model: str,
        version: str,
        norms: np.ndarray,
        token_counts: Sequence[int],
        unit_vectors: np.ndarray | None = None,
    ) -> None:
        """After an Embed: each vector's norm before normalisation, each input's token count and,
        when `wants_vectors`, the unit vectors for the drift window."""
        try:
            record_embeddings(self.service, model, version, norms.tolist(), token_counts)
            if self.monitor is not None and unit_vectors is not None:
                self.monitor.observe_embeddings(ModelKey(model, version), unit_vectors)
        except Exception:
            log.warning("quality recording failed", extra={"service": self.service}, exc_info=True)

    async def feedback(self, request_id: str, index: int, label: str) -> FeedbackResult:
        """Joins the true `label` of text `index` of request `request_id` with its prediction.

        NotFound when the prediction is unknown or expired (or feedback is off); a store
        failure is BackendFailure.
        """
        if self.joiner is None:
            raise NotFound(f"{self.service} keeps no predictions (quality.feedback.enabled is false)")
        if self._predictions:
            await asyncio.wait(set(self._predictions), timeout=FEEDBACK_WAIT_S)
        try:
            result = await self.joiner.feedback(request_id, index, label)
        except TextserveError:
            raise
        except Exception as error:
            log.warning("feedback store failed", extra={"service": self.service}, exc_info=True)
            raise BackendFailure(f"feedback store unavailable: {type(error).__name__}") from None
        payload = self.payload_log
        joined = result is FeedbackResult.JOINED
        if joined and isinstance(payload, PayloadLog) and sampled(request_id, payload.sample_rate):
            self._spawn("payload", payload.log_feedback(request_id, index, label))
        return result

    def live(self, model: str, version: str) -> LiveStats | None:
        """The live accuracy stats of a model version (None before its first joined feedback)."""
        return None if self.joiner is None else self.joiner.live(model, version)

    # --- internals ------------------------------------------------------------------------
    def _spawn(
        self, kind: str, work: Coroutine[Any, Any, Any], also: set[asyncio.Task[Any]] | None = None
    ) -> None:
        if len(self._writes) >= self.config.max_pending_writes:
            work.close()
            QUALITY_WRITES_DROPPED.labels(self.service, kind).inc()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        if also is not None:
            also.add(task)
            task.add_done_callback(also.discard)
        task.add_done_callback(_consume)


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieves a finished write's exception (the writers log their own failures)."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("quality write failed", exc_info=task.exception())
