"""The dynamic batcher: formation by padded-token budget, admission, drops, supervision."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from textserve.core.batcher import Batcher, form_batch
from textserve.core.config import BatcherConfig
from textserve.core.errors import BackendFailure, DeadlineExceeded, Overloaded
from textserve.core.metrics import REGISTRY


def test_form_batch_respects_size_and_padded_tokens() -> None:
    assert form_batch([10] * 10, max_batch_size=4, max_batch_tokens=1000, group_by_length=True) == [
        0,
        1,
        2,
        3,
    ]
    # 5 x 10 padded tokens = 50 > 40: only four fit.
    assert len(form_batch([10] * 10, max_batch_size=64, max_batch_tokens=40, group_by_length=True)) == 4
    # The oldest always runs, even alone over budget.
    assert form_batch([500, 5], max_batch_size=8, max_batch_tokens=100, group_by_length=True) == [0]


def test_form_batch_groups_similar_lengths() -> None:
    lengths = [12, 240, 13, 250, 11, 245]
    chosen = form_batch(lengths, max_batch_size=3, max_batch_tokens=10_000, group_by_length=True)
    assert chosen == [0, 2, 4]
    fifo = form_batch(lengths, max_batch_size=3, max_batch_tokens=10_000, group_by_length=False)
    assert fifo == [0, 1, 2]


def test_form_batch_long_texts_run_in_small_batches() -> None:
    long = form_batch([240] * 20, max_batch_size=64, max_batch_tokens=1024, group_by_length=True)
    short = form_batch([12] * 100, max_batch_size=64, max_batch_tokens=1024, group_by_length=True)
    assert len(long) == 4 and len(short) == 64


class Recorder:
    """A batch function that records the batches it saw (runs in the worker thread)."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail = fail
        self.threads: set[str] = set()
        self.entered: list[list[int]] = []
        """Batches that reached the function, recorded before the gate (what is running now)."""
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.append(list(items))
        assert self.gate.wait(60), "the test never opened the gate"
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)  # a deliberately slow forward: the behaviour under test
        if self.fail:
            raise RuntimeError("boom")
        return [item * 2 for item in items]


def depth() -> float:
    """Texts waiting in the test batcher's queue (its metric)."""
    return (
        REGISTRY.get_sample_value("textserve_queue_depth", {"service": "test", "model": "m", "version": "1"})
        or 0.0
    )


async def until(condition: Callable[[], object], limit_s: float = 30.0) -> None:
    """Bounded poll of a state the batcher's loop or worker sets."""
    stop_at = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < stop_at, "condition not reached"
        await asyncio.sleep(0.001)


async def make(recorder: Recorder, **config: object) -> Batcher[int, int]:
    batcher: Batcher[int, int] = Batcher(recorder, BatcherConfig(**config), service="test", model="m")  # type: ignore[arg-type]
    await batcher.start()
    return batcher


async def test_results_and_timings_come_back_in_order() -> None:
    recorder = Recorder()
    batcher = await make(recorder)
    results = await batcher.run([1, 2, 3], [5, 5, 5])
    assert [r.value for r in results] == [2, 4, 6]
    assert all(r.queue_seconds >= 0 and r.inference_seconds >= 0 for r in results)
    assert recorder.threads and "MainThread" not in recorder.threads
    await batcher.stop()


async def test_concurrent_callers_share_batches() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher = await make(recorder, max_batch_size=8)
    calls = [asyncio.create_task(batcher.run([i], [4])) for i in range(17)]
    # One batch is running (held at the gate), the rest of the 17 wait in the queue.
    await until(lambda: recorder.entered and sum(map(len, recorder.entered)) + depth() == 17)
    recorder.gate.set()
    results = await asyncio.gather(*calls)
    assert [r[0].value for r in results] == [i * 2 for i in range(17)]
    assert max(len(b) for b in recorder.batches) == 8
    assert len(recorder.batches) <= 4
    await batcher.stop()


async def test_full_queue_rejects_at_once() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher = await make(recorder, max_queue_size=4, max_batch_size=1)
    first = asyncio.create_task(batcher.run([0], [1]))
    await until(lambda: recorder.entered)  # the first is now running (blocked), the queue is empty
    waiting = [asyncio.create_task(batcher.run([i], [1])) for i in range(1, 5)]
    await until(lambda: depth() == 4)
    with pytest.raises(Overloaded, match="max_queue_size=4"):
        await batcher.run([99], [1])
    recorder.gate.set()
    await asyncio.gather(first, *waiting)
    await batcher.stop()


async def test_cancelled_requests_are_never_computed() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher = await make(recorder, max_batch_size=1)
    blocker = asyncio.create_task(batcher.run([0], [1]))
    await until(lambda: recorder.entered)
    doomed = asyncio.create_task(batcher.run([7], [1]))
    kept = asyncio.create_task(batcher.run([8], [1]))
    await until(lambda: depth() == 2)
    doomed.cancel()
    before = (
        REGISTRY.get_sample_value(
            "textserve_batcher_dropped_total",
            {"service": "test", "model": "m", "version": "1", "reason": "cancelled"},
        )
        or 0.0
    )
    recorder.gate.set()
    await blocker
    assert (await kept)[0].value == 16
    assert all(7 not in batch for batch in recorder.batches)
    after = REGISTRY.get_sample_value(
        "textserve_batcher_dropped_total",
        {"service": "test", "model": "m", "version": "1", "reason": "cancelled"},
    )
    assert after == before + 1
    await batcher.stop()


async def test_expired_requests_are_never_computed() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher = await make(recorder, max_batch_size=1)
    blocker = asyncio.create_task(batcher.run([0], [1]))
    await until(lambda: recorder.entered)
    deadline = time.monotonic() + 0.01
    expired = asyncio.create_task(batcher.run([5], [1], deadline=deadline))
    await until(lambda: depth() == 1)
    # Time passing the deadline is the behaviour under test (not synchronisation).
    await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
    recorder.gate.set()
    await blocker
    with pytest.raises(DeadlineExceeded):
        await expired
    assert all(5 not in batch for batch in recorder.batches)
    await batcher.stop()


async def test_failed_forward_fails_every_member_and_batcher_survives() -> None:
    recorder = Recorder(fail=True)
    batcher = await make(recorder)
    with pytest.raises(BackendFailure, match="boom"):
        await batcher.run([1, 2], [3, 3])
    recorder.fail = False
    assert [r.value for r in await batcher.run([3], [3])] == [6]
    await batcher.stop()


async def test_dead_loop_fails_pending_futures() -> None:
    """If the batching loop itself dies, every queued caller gets an error (none hangs)."""
    recorder = Recorder()
    recorder.gate.clear()
    batcher = await make(recorder, max_batch_size=1)
    running = asyncio.create_task(batcher.run([1], [1]))
    await until(lambda: recorder.entered)

    def broken_take_batch() -> list[object]:
        raise RuntimeError("loop crashed")

    batcher._take_batch = broken_take_batch  # type: ignore[method-assign,assignment]
    queued = asyncio.create_task(batcher.run([2], [1]))
    await until(lambda: depth() == 1)
    recorder.gate.set()
    await running
    with pytest.raises(BackendFailure, match="batcher loop died"):
        await asyncio.wait_for(queued, 5)
    await batcher.stop()


async def test_queue_delay_waits_for_more_when_idle() -> None:
    recorder = Recorder()
    # The delay is far longer than the test: the batch runs because it is full (2), not timed out.
    batcher = await make(recorder, max_queue_delay_ms=10_000, max_batch_size=2)
    first = asyncio.create_task(batcher.run([1], [1]))
    await until(lambda: depth() == 1)
    second = asyncio.create_task(batcher.run([2], [1]))
    await asyncio.gather(first, second)
    assert recorder.batches == [[1, 2]]
    await batcher.stop()
