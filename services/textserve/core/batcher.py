"""Generic async dynamic batcher: one bounded queue, batches formed by a token budget.

Owns admission (non-blocking; full queue -> Overloaded at once), batch formation
(max_batch_size texts and max_batch_tokens *padded* tokens, i.e. batch size x longest
text, grouping similar lengths to cut padding), dropping entries whose client left or
whose deadline passed before they are computed, running the batch function in a worker
thread off the event loop, and handing each caller its result with queue and inference
times. It imports neither grpc nor any model library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from textserve.core import metrics
from textserve.core.config import BatcherConfig
from textserve.core.errors import BackendFailure, DeadlineExceeded, NotReady, Overloaded, TextserveError

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class BatchResult(Generic[Out]):
    """One item's result with where its time went."""

    value: Out
    queue_seconds: float
    inference_seconds: float
    batch_size: int


@dataclass(eq=False)
class _Entry(Generic[In, Out]):
    item: In
    tokens: int
    deadline: float | None
    enqueued: float
    future: asyncio.Future[BatchResult[Out]] = field(repr=False)


@dataclass(frozen=True)
class BatchBudget:
    """The limits batches are formed under: the one budget type (the tuner chooses one too).

    A batcher starts with its config's budget and may be given a tuned one before it
    serves (`Batcher.set_budget`).
    """

    max_batch_size: int
    """Most texts in one batch."""
    max_batch_tokens: int
    """Most padded tokens (batch size x longest text) in one batch."""
    source: str = "config"
    """Where the budget came from: "config", "autotune" (measured at start, not saved) or
    "tuned:<file>" (a `textserve tune` file)."""


SIMILAR_SLACK_TOKENS = 8
"""Lengths this close always count as similar (padding a few tokens costs next to nothing)."""


def form_batch(
    lengths: Sequence[int],
    max_batch_size: int,
    max_batch_tokens: int,
    group_by_length: bool,
    length_ratio: float | None = None,
) -> list[int]:
    """Chooses which pending entries (by index, oldest first) make the next batch.

    The oldest entry always goes in (no starvation). With grouping, the others are taken
    in order of closeness to its length; a text joins only while
    (batch size) x (longest text) stays within max_batch_tokens. With grouping and a
    `length_ratio`, a text also joins only when it is similar to the oldest: the longer
    of the two at most length_ratio x the shorter + SIMILAR_SLACK_TOKENS. (Without it, a
    12-token text that joins a batch padded to 240 tokens costs as much as a 240-token text.)
    """
    if not lengths:
        return []
    anchor = lengths[0]
    ratio = length_ratio if group_by_length and length_ratio else None
    if group_by_length:
        order = sorted(range(1, len(lengths)), key=lambda i: (abs(lengths[i] - anchor), i))
    else:
        order = list(range(1, len(lengths)))
    chosen = [0]
    longest = anchor
    for index in order:
        if len(chosen) >= max_batch_size:
            break
        length = lengths[index]
        if ratio is not None and max(length, anchor) > ratio * min(length, anchor) + SIMILAR_SLACK_TOKENS:
            continue  # not similar to the oldest text
        candidate_longest = max(longest, length)
        if (len(chosen) + 1) * candidate_longest > max_batch_tokens:
            if group_by_length:
                continue
            break
        chosen.append(index)
        longest = candidate_longest
    return sorted(chosen)


class Batcher(Generic[In, Out]):
    """Dynamic batcher around a synchronous `run_batch(items) -> outputs` function."""

    def __init__(
        self,
        run_batch: Callable[[list[In]], Sequence[Out]],
        config: BatcherConfig,
        *,
        service: str,
        model: str,
        version: str = "1",
    ) -> None:
        self._run_batch = run_batch
        self._config = config
        self.budget = BatchBudget(config.max_batch_size, config.max_batch_tokens)
        self._labels = {"service": service, "model": model, "version": version}
        # Children resolved once: .labels() on the hot path costs a lock and a dict lookup.
        self._queue_depth = metrics.QUEUE_DEPTH.labels(**self._labels)
        self._queue_duration = metrics.QUEUE_DURATION.labels(**self._labels)
        self._batch_size = metrics.BATCH_SIZE.labels(**self._labels)
        self._batch_tokens = metrics.BATCH_TOKENS.labels(**self._labels)
        self._inference_duration = metrics.INFERENCE_DURATION.labels(**self._labels)
        self._pending: list[_Entry[In, Out]] = []
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        metrics.QUEUE_CAPACITY.labels(**self._labels).set(config.max_queue_size)
        self._publish_budget()

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Starts the batching loop on the running event loop."""
        if self._loop_task is not None:
            return
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self._config.workers)
        self._executor = ThreadPoolExecutor(
            max_workers=self._config.workers, thread_name_prefix=f"batch-{self._labels['model']}"
        )
        self._loop_task = asyncio.create_task(self._loop(), name=f"batcher-{self._labels['model']}")
        self._loop_task.add_done_callback(self._on_loop_done)

    async def stop(self) -> None:
        """Stops taking work, lets running batches finish, fails whatever is still queued.

        The loop stops first, so no batch starts while the running ones finish (a slot they
        free would otherwise take queued work, or not, depending on which task ran first).
        """
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task  # a crash was already reported by _on_loop_done
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._fail_pending(NotReady("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        """Texts waiting now."""
        return len(self._pending)

    def set_budget(self, max_batch_size: int, max_batch_tokens: int, source: str) -> None:
        """Replaces the batch budget (used by the tuner and tuned-budget files)."""
        self.budget = BatchBudget(max_batch_size, max_batch_tokens, source)
        self._publish_budget()

    def _publish_budget(self) -> None:
        metrics.BATCH_BUDGET_SIZE.labels(**self._labels).set(self.budget.max_batch_size)
        metrics.BATCH_BUDGET_TOKENS.labels(**self._labels).set(self.budget.max_batch_tokens)

    # --- admission -----------------------------------------------------------------------
    def submit_many(
        self, items: Sequence[In], tokens: Sequence[int], deadline: float | None
    ) -> list[asyncio.Future[BatchResult[Out]]]:
        """Enqueues all items or none: raises Overloaded at once when they do not fit.

        `deadline` is an absolute time.monotonic() value (None: no deadline).
        """
        if self._closed or self._loop_task is None or self._wakeup is None:
            raise NotReady("batcher is not running")
        if len(self._pending) + len(items) > self._config.max_queue_size:
            metrics.BATCHER_REJECTED.labels(**self._labels).inc(len(items))
            raise Overloaded(
                f"queue full: {len(self._pending)} texts waiting, max_queue_size="
                f"{self._config.max_queue_size}; retry with backoff"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures: list[asyncio.Future[BatchResult[Out]]] = []
        for item, count in zip(items, tokens, strict=True):
            future: asyncio.Future[BatchResult[Out]] = loop.create_future()
            self._pending.append(_Entry(item, max(1, int(count)), deadline, now, future))
            futures.append(future)
        self._queue_depth.set(len(self._pending))
        self._wakeup.set()
        return futures

    async def run(
        self, items: Sequence[In], tokens: Sequence[int], deadline: float | None = None
    ) -> list[BatchResult[Out]]:
        """Submits items and waits for all results; cancelling the caller drops its queued items."""
        futures = self.submit_many(items, tokens, deadline)
        try:
            if len(futures) == 1:  # one text per call is the common case: no gathering future
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    # --- the loop ------------------------------------------------------------------------
    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("batcher loop died", exc_info=error, extra={"model": self._labels["model"]})
            self._fail_pending(BackendFailure(f"batcher loop died: {error!r}"))

    def _fail_pending(self, error: TextserveError) -> None:
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(error)
        self._pending.clear()
        self._queue_depth.set(0)

    def _drop_dead_entries(self) -> None:
        """Removes entries whose client left or whose deadline passed; they are never computed."""
        now = time.monotonic()
        alive: list[_Entry[In, Out]] = []
        for entry in self._pending:
            if entry.future.done():
                metrics.BATCHER_DROPPED.labels(**self._labels, reason="cancelled").inc()
            elif entry.deadline is not None and entry.deadline <= now:
                entry.future.set_exception(DeadlineExceeded("deadline passed while queued; not computed"))
                metrics.BATCHER_DROPPED.labels(**self._labels, reason="expired").inc()
            else:
                alive.append(entry)
        if len(alive) != len(self._pending):
            self._pending = alive
            self._queue_depth.set(len(alive))

    async def _loop(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        delay = self._config.max_queue_delay_ms / 1000.0
        while True:
            await self._slots.acquire()
            try:
                while True:
                    self._drop_dead_entries()
                    if self._pending:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if delay > 0:
                    await self._wait_to_fill(delay)
                    self._drop_dead_entries()
                    if not self._pending:
                        self._slots.release()
                        continue
            except BaseException:
                self._slots.release()
                raise
            batch = self._take_batch()
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_to_fill(self, delay: float) -> None:
        """Waits until the batch is full or the oldest entry has waited `delay`."""
        assert self._wakeup is not None
        while self._pending and len(self._pending) < self.budget.max_batch_size:
            remaining = self._pending[0].enqueued + delay - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take_batch(self) -> list[_Entry[In, Out]]:
        indices = form_batch(
            [entry.tokens for entry in self._pending],
            self.budget.max_batch_size,
            self.budget.max_batch_tokens,
            self._config.group_by_length,
            self._config.group_length_ratio or None,
        )
        chosen = set(indices)
        batch = [self._pending[i] for i in indices]
        self._pending = [entry for i, entry in enumerate(self._pending) if i not in chosen]
        self._queue_depth.set(len(self._pending))
        return batch

    async def _execute(self, batch: list[_Entry[In, Out]]) -> None:
        assert self._slots is not None
        try:
            started = time.monotonic()
            labels = self._labels
            for entry in batch:
                self._queue_duration.observe(started - entry.enqueued)
            self._batch_size.observe(len(batch))
            self._batch_tokens.observe(len(batch) * max(e.tokens for e in batch))
            items = [entry.item for entry in batch]
            loop = asyncio.get_running_loop()
            try:
                outputs, seconds = await loop.run_in_executor(self._executor, self._timed_run, items)
            except TextserveError as exc:
                self._fail(batch, exc)
                return
            except Exception as exc:  # the backend's own failure
                log.exception("batch forward failed", extra={"model": labels["model"], "batch": len(batch)})
                self._fail(batch, BackendFailure(f"model forward failed: {type(exc).__name__}: {exc}"))
                return
            self._inference_duration.observe(seconds)
            if len(outputs) != len(batch):
                self._fail(batch, BackendFailure(f"backend returned {len(outputs)} outputs for {len(batch)}"))
                return
            for entry, output in zip(batch, outputs, strict=True):
                if not entry.future.done():
                    entry.future.set_result(
                        BatchResult(output, started - entry.enqueued, seconds, len(batch))
                    )
        finally:
            self._slots.release()

    def _timed_run(self, items: list[In]) -> tuple[Sequence[Out], float]:
        started = time.perf_counter()
        outputs = self._run_batch(items)
        return outputs, time.perf_counter() - started

    @staticmethod
    def _fail(batch: list[_Entry[In, Out]], error: TextserveError) -> None:
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(error)
