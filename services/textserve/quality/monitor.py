"""DriftMonitor: sliding windows of recent inputs per (model, version), tested off the request path.

The request path only appends to a bounded window (`observe_embeddings`,
`observe_outputs`: O(batch) work under a short lock, no statistics). When a window is full
and either `test_every_n` new inputs arrived or `test_every_s` passed since the last run,
the tests are handed to one worker thread; at most one run per window is in flight, so a
burst of traffic cannot queue up work. In the worker, BLAS is limited to one thread
(threadpoolctl), so a run uses at most one core. Results go to hooks: `metrics_hook`
sets the drift gauges of `quality.metrics`; tests and other sinks can add their own.

References come from a file (`DriftConfig.reference_file`, or `set_reference` per model
version), or, with `capture_reference = N`, from the first N inputs of each version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from threadpoolctl import threadpool_limits

from textserve.quality.config import DriftConfig
from textserve.quality.drift import (
    ConfidenceDrift,
    DriftResult,
    LabelMixDrift,
    MMDDrift,
    ProjectionKSDrift,
)
from textserve.quality.metrics import publish_drift
from textserve.quality.reference import Reference, load_reference

log = logging.getLogger(__name__)

Kind = Literal["embeddings", "outputs"]


@dataclass(frozen=True)
class ModelKey:
    """The model version whose inputs a window holds."""

    model: str
    version: str


ResultHook = Callable[[ModelKey, DriftResult, float], None]
"""Called in the worker thread with (model version, result, CPU seconds of the test)."""


def metrics_hook(service: str) -> ResultHook:
    """A hook that exports each result as textserve_drift_* gauges of `service`."""

    def publish(key: ModelKey, result: DriftResult, cpu_s: float) -> None:
        publish_drift(service, key.model, key.version, result.detector, result.p_value, result.drifted, cpu_s)

    return publish


@dataclass
class _Stream:
    """The window, reference and run state of one (model version, kind)."""

    kind: Kind
    window: deque[Any]
    reference: Reference | None
    capture: list[Any] = field(default_factory=list)
    detectors: list[Any] | None = None
    since_last: int = 0
    last_run: float = 0.0
    running: bool = False
    latest: dict[str, DriftResult] = field(default_factory=dict)


class DriftMonitor:
    """Keeps windows per (model, version) and runs the drift tests in a worker thread."""

    def __init__(
        self,
        config: DriftConfig,
        *,
        hooks: Sequence[ResultHook] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._hooks = list(hooks)
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[tuple[ModelKey, Kind], _Stream] = {}
        self._references: dict[ModelKey, Reference] = {}
        self._default_reference = load_reference(config.reference_file) if config.reference_file else None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[Future[None]] = set()
        self._closed = False

    # --- configuration --------------------------------------------------------------------
    def add_hook(self, hook: ResultHook) -> None:
        """Adds a result hook (called for every later result)."""
        self._hooks.append(hook)

    def set_reference(self, key: ModelKey, reference: Reference) -> None:
        """Sets the reference of one model version; its windows restart against it."""
        with self._lock:
            self._references[key] = reference
            for kind in ("embeddings", "outputs"):
                self._streams.pop((key, kind), None)

    # --- request path ---------------------------------------------------------------------
    def observe_embeddings(self, key: ModelKey, vectors: np.ndarray) -> None:
        """Appends a batch of embeddings (rows) to the window of `key`; never computes a test."""
        if not self.config.enabled:
            return
        rows = np.array(vectors, dtype=np.float32, copy=True)
        if rows.ndim != 2:
            raise ValueError(f"vectors must be 2-D, got shape {rows.shape}")
        self._observe(key, "embeddings", list(rows))

    def observe_outputs(self, key: ModelKey, labels: Sequence[str], confidences: Sequence[float]) -> None:
        """Appends a batch of classifier outputs (top label, top score) to the window of `key`."""
        if not self.config.enabled:
            return
        if len(labels) != len(confidences):
            raise ValueError(f"{len(labels)} labels but {len(confidences)} confidences")
        items = [(str(label), float(c)) for label, c in zip(labels, confidences, strict=True)]
        self._observe(key, "outputs", items)

    # --- results and lifecycle ------------------------------------------------------------
    def latest(self, key: ModelKey) -> dict[str, DriftResult]:
        """The latest result of each detector of `key`, by detector name."""
        with self._lock:
            results: dict[str, DriftResult] = {}
            for kind in ("embeddings", "outputs"):
                stream = self._streams.get((key, kind))
                if stream is not None:
                    results.update(stream.latest)
            return results

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Waits until no test is running or queued; False if `timeout_s` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                return False
            for future in pending:
                try:
                    future.result(timeout=remaining)
                except TimeoutError:
                    return False

    def close(self) -> None:
        """Stops accepting work and waits for the running test to finish."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    # --- internals ------------------------------------------------------------------------
    def _stream(self, key: ModelKey, kind: Kind) -> _Stream:
        stream = self._streams.get((key, kind))
        if stream is None:
            reference = self._references.get(key, self._default_reference)
            if reference is not None and self._part(reference, kind) is None:
                reference = None
            stream = _Stream(kind, deque(maxlen=self.config.window_size), reference)
            self._streams[(key, kind)] = stream
        return stream

    @staticmethod
    def _part(reference: Reference, kind: Kind) -> object | None:
        return reference.vectors if kind == "embeddings" else reference.labels

    def _observe(self, key: ModelKey, kind: Kind, items: list[Any]) -> None:
        with self._lock:
            if self._closed:
                return
            stream = self._stream(key, kind)
            if stream.reference is None:
                wanted = self.config.capture_reference - len(stream.capture)
                if wanted <= 0:
                    return
                stream.capture.extend(items[:wanted])
                if len(stream.capture) >= self.config.capture_reference:
                    stream.reference = self._captured(kind, stream.capture)
                    stream.capture = []
                    stream.last_run = self._clock()
                return
            stream.window.extend(items)
            stream.since_last += len(items)
            if stream.running or len(stream.window) < self.config.window_size:
                return
            now = self._clock()
            due_by_count = stream.since_last >= self.config.test_every_n
            due_by_time = self.config.test_every_s > 0 and now - stream.last_run >= self.config.test_every_s
            if not (due_by_count or due_by_time):
                return
            stream.running = True
            stream.since_last = 0
            stream.last_run = now
            snapshot = list(stream.window)
            self._submit(key, stream, snapshot)

    @staticmethod
    def _captured(kind: Kind, items: list[Any]) -> Reference:
        if kind == "embeddings":
            return Reference(vectors=np.stack(items))
        return Reference(
            labels=tuple(label for label, _ in items),
            confidences=np.array([confidence for _, confidence in items], dtype=np.float64),
        )

    def _submit(self, key: ModelKey, stream: _Stream, snapshot: list[Any]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textserve-drift")
        future = self._executor.submit(self._run, key, stream, snapshot)
        self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _fit(self, stream: _Stream) -> list[Any]:
        reference = stream.reference
        assert reference is not None
        config = self.config
        if stream.kind == "embeddings":
            assert reference.vectors is not None
            if config.embedding_detector == "mmd":
                return [
                    MMDDrift(
                        reference.vectors,
                        significance=config.significance,
                        n_permutations=config.n_permutations,
                        max_reference=config.max_reference,
                        seed=config.seed,
                    )
                ]
            return [
                ProjectionKSDrift(
                    reference.vectors,
                    significance=config.significance,
                    n_projections=config.n_projections,
                    seed=config.seed,
                )
            ]
        assert reference.labels is not None and reference.confidences is not None
        return [
            LabelMixDrift(reference.labels, significance=config.significance),
            ConfidenceDrift(list(reference.confidences), significance=config.significance),
        ]

    def _run(self, key: ModelKey, stream: _Stream, snapshot: list[Any]) -> None:
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                if stream.detectors is None:
                    stream.detectors = self._fit(stream)
                windows = self._inputs(stream.kind, snapshot)
                for detector, window in zip(stream.detectors, windows, strict=True):
                    started = time.thread_time()
                    result = detector.test(window)
                    cpu_s = time.thread_time() - started
                    with self._lock:
                        stream.latest[result.detector] = result
                    for hook in self._hooks:
                        hook(key, result, cpu_s)
        except Exception:
            log.exception("drift test of %s/%s (%s) failed", key.model, key.version, stream.kind)
        finally:
            with self._lock:
                stream.running = False

    @staticmethod
    def _inputs(kind: Kind, snapshot: list[Any]) -> list[Any]:
        if kind == "embeddings":
            return [np.stack(snapshot)]
        return [[label for label, _ in snapshot], [confidence for _, confidence in snapshot]]
