"""The batcher's contract beyond batch formation: the queue delay, budgets set at run time,
its metrics (what dashboards and alerts read), shutdown, and what a backend's answer becomes.

Each test has its own `model` label, and metric checks are before/after deltas, so tests
neither see each other's samples nor depend on order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from textserve.core.batcher import Batcher
from textserve.core.config import BatcherConfig
from textserve.core.errors import BackendFailure, DeadlineExceeded, InvalidInput, NotReady, Overloaded
from textserve.core.metrics import REGISTRY

_names = itertools.count()


class Forward:
    """A batch function (runs in the worker thread): doubles items, records batches, may be held."""

    def __init__(self, answer: Callable[[list[int]], Sequence[int]] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.answer = answer

    def __call__(self, items: list[int]) -> Sequence[int]:
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        self.batches.append(list(items))
        return self.answer(items) if self.answer else [item * 2 for item in items]


class Probe:
    """A started batcher with its own model label, and its metric samples."""

    def __init__(self, forward: Forward, **config: object) -> None:
        self.model = f"contract-{next(_names)}"
        self.labels = {"service": "test", "model": self.model, "version": "1"}
        self.batcher: Batcher[int, int] = Batcher(
            forward,
            BatcherConfig(**config),  # type: ignore[arg-type]
            service="test",
            model=self.model,
        )

    def sample(self, name: str, **extra: str) -> float:
        return REGISTRY.get_sample_value(name, {**self.labels, **extra}) or 0.0


async def started(forward: Forward, **config: object) -> Probe:
    probe = Probe(forward, **config)
    await probe.batcher.start()
    return probe


async def until(condition: Callable[[], object], limit_s: float = 30.0) -> None:
    """Bounded poll of a state the batcher's loop or worker sets."""
    stop_at = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < stop_at, "condition not reached"
        await asyncio.sleep(0.001)


async def test_a_lone_text_runs_once_its_queue_delay_has_passed() -> None:
    forward = Forward()
    probe = await started(forward, max_queue_delay_ms=30, max_batch_size=8)
    (result,) = await asyncio.wait_for(probe.batcher.run([1], [4]), 30)
    assert result.value == 2 and result.batch_size == 1
    assert result.queue_seconds >= 0.03  # it waited for company that never came, then ran
    assert forward.batches == [[1]]
    await probe.batcher.stop()


async def test_a_full_batch_does_not_wait_for_the_queue_delay() -> None:
    forward = Forward()
    # A 10 s delay: if a full batch waited for it, the call would miss the 8 s bound.
    probe = await started(forward, max_queue_delay_ms=10_000, max_batch_size=2)
    results = await asyncio.wait_for(probe.batcher.run([1, 2], [3, 3]), 8)
    assert [r.value for r in results] == [2, 4] and forward.batches == [[1, 2]]
    await probe.batcher.stop()


async def test_an_entry_that_expires_during_the_delay_is_dropped_and_the_slot_freed() -> None:
    forward = Forward()
    probe = await started(forward, max_queue_delay_ms=50, max_batch_size=8, workers=1)
    expired_before = probe.sample("textserve_batcher_dropped_total", reason="expired")
    with pytest.raises(DeadlineExceeded, match="not computed"):
        await asyncio.wait_for(probe.batcher.run([5], [1], deadline=time.monotonic() + 0.01), 30)
    assert probe.sample("textserve_batcher_dropped_total", reason="expired") == expired_before + 1
    assert probe.sample("textserve_batcher_dropped_total", reason="cancelled") == 0
    # The one worker slot was given back: the next request still runs.
    assert [r.value for r in await asyncio.wait_for(probe.batcher.run([6], [1]), 30)] == [12]
    assert forward.batches == [[6]]
    await probe.batcher.stop()


async def test_a_deadline_in_the_future_is_served() -> None:
    forward = Forward()
    probe = await started(forward)
    results = await probe.batcher.run([3], [1], deadline=time.monotonic() + 60)
    assert [r.value for r in results] == [6]
    assert probe.sample("textserve_batcher_dropped_total", reason="expired") == 0
    await probe.batcher.stop()


async def test_set_budget_changes_batches_and_the_published_budget() -> None:
    forward = Forward()
    probe = await started(forward, max_batch_size=32, max_batch_tokens=1000)
    assert probe.sample("textserve_batch_budget_size") == 32
    assert probe.sample("textserve_batch_budget_tokens") == 1000
    assert probe.batcher.budget.source == "config"
    probe.batcher.set_budget(2, 100, "tuned:budget.json")
    assert (probe.batcher.budget.max_batch_size, probe.batcher.budget.max_batch_tokens) == (2, 100)
    assert probe.batcher.budget.source == "tuned:budget.json"
    assert probe.sample("textserve_batch_budget_size") == 2
    assert probe.sample("textserve_batch_budget_tokens") == 100
    forward.gate.clear()
    call = asyncio.create_task(probe.batcher.run([1, 2, 3, 4, 5], [10] * 5))
    await until(forward.entered.is_set)
    forward.gate.set()
    await call
    assert forward.batches == [[1, 2], [3, 4], [5]]
    probe.batcher.set_budget(8, 30, "autotune")  # three 10-token texts fit in 30 padded tokens
    await probe.batcher.run([6, 7, 8, 9], [10] * 4)
    assert forward.batches[3:] == [[6, 7, 8], [9]]
    await probe.batcher.stop()


async def test_metrics_describe_the_queue_and_the_batches() -> None:
    forward = Forward()
    forward.gate.clear()
    probe = await started(forward, max_queue_size=7, max_batch_size=8, workers=1)
    assert probe.sample("textserve_queue_capacity") == 7
    running = asyncio.create_task(probe.batcher.run([1], [2]))
    await until(forward.entered.is_set)
    assert probe.sample("textserve_queue_depth") == 0  # taken into the running batch
    started_at = time.perf_counter()
    queued = asyncio.create_task(probe.batcher.run([2, 3, 4], [5, 0, 9]))
    await until(lambda: probe.batcher.depth == 3)
    assert probe.sample("textserve_queue_depth") == 3
    with pytest.raises(Overloaded, match="3 texts waiting, max_queue_size=7"):
        probe.batcher.submit_many([5, 6, 7, 8, 9], [1] * 5, None)
    assert probe.sample("textserve_batcher_rejected_total") == 5
    forward.gate.set()
    results = await queued
    await running
    elapsed = time.perf_counter() - started_at
    assert [r.value for r in results] == [4, 6, 8]
    assert [r.batch_size for r in results] == [3, 3, 3]
    assert probe.sample("textserve_queue_depth") == 0
    assert probe.sample("textserve_batch_size_count") == 2
    assert probe.sample("textserve_batch_size_sum") == 1 + 3
    # Padded tokens: 1 x 2, then 3 x 9 (the longest; a 0-token text counts as 1).
    assert probe.sample("textserve_batch_tokens_sum") == 2 + 27
    assert probe.sample("textserve_queue_duration_seconds_count") == 4
    assert probe.sample("textserve_inference_duration_seconds_count") == 2
    queue_seconds = probe.sample("textserve_queue_duration_seconds_sum")
    assert queue_seconds >= sum(r.queue_seconds for r in results) > 0  # the three waited for the first
    # Durations are durations: none is longer than the test itself took (and none negative).
    assert all(0 <= r.queue_seconds <= elapsed and 0 <= r.inference_seconds <= elapsed for r in results)
    assert queue_seconds <= 4 * elapsed + 1
    assert 0 <= probe.sample("textserve_inference_duration_seconds_sum") <= 2 * elapsed + 1
    await probe.batcher.stop()


async def test_a_text_of_no_tokens_counts_as_one() -> None:
    forward = Forward()
    probe = await started(forward, max_batch_size=8, max_batch_tokens=2)
    await probe.batcher.run([1, 2, 3], [0, 0, 0])  # 1 token each: two fit in 2 padded tokens
    assert forward.batches == [[1, 2], [3]]
    await probe.batcher.stop()


async def test_a_batcher_that_is_not_running_refuses_work() -> None:
    probe = Probe(Forward())
    with pytest.raises(NotReady, match="not running"):
        probe.batcher.submit_many([1], [1], None)
    await probe.batcher.start()
    await probe.batcher.start()  # a second start is a no-op
    assert [r.value for r in await probe.batcher.run([1], [1])] == [2]
    await probe.batcher.stop()
    with pytest.raises(NotReady, match="not running"):
        await probe.batcher.run([1], [1])


async def test_stop_finishes_running_batches_and_fails_queued_ones() -> None:
    forward = Forward()
    forward.gate.clear()
    probe = await started(forward, max_batch_size=1, workers=1)
    running = asyncio.create_task(probe.batcher.run([1], [1]))
    await until(forward.entered.is_set)
    queued = asyncio.create_task(probe.batcher.run([2], [1]))
    await until(lambda: probe.batcher.depth == 1)
    stopping = asyncio.create_task(probe.batcher.stop())
    await until(lambda: probe.batcher._closed)
    forward.gate.set()
    await stopping
    assert [r.value for r in await running] == [2]
    with pytest.raises(NotReady, match="shutting down"):
        await queued
    assert probe.batcher.depth == 0 and probe.sample("textserve_queue_depth") == 0
    assert forward.batches == [[1]]


async def test_a_backend_answering_the_wrong_number_of_outputs_fails_the_batch() -> None:
    forward = Forward(answer=lambda items: [0])
    probe = await started(forward)
    with pytest.raises(BackendFailure, match="returned 1 outputs for 2"):
        await probe.batcher.run([1, 2], [1, 1])
    await probe.batcher.stop()


async def test_a_backend_error_of_our_own_kind_reaches_the_caller_as_it_is() -> None:
    def reject(items: list[int]) -> Sequence[int]:
        raise InvalidInput("texts[0]", "too odd")

    probe = await started(Forward(answer=reject))
    with pytest.raises(InvalidInput, match="texts\\[0\\]: too odd"):
        await probe.batcher.run([1], [1])
    await probe.batcher.stop()


async def test_a_backend_crash_names_its_type_and_message() -> None:
    def crash(items: list[int]) -> Sequence[int]:
        raise ValueError("bad shape")

    probe = await started(Forward(answer=crash))
    with pytest.raises(BackendFailure, match="model forward failed: ValueError: bad shape"):
        await probe.batcher.run([1], [1])
    await probe.batcher.stop()


async def test_errors_say_exactly_what_happened() -> None:
    forward = Forward()
    forward.gate.clear()
    probe = await started(forward, max_batch_size=1, max_queue_delay_ms=0)
    running = asyncio.create_task(probe.batcher.run([1], [1]))
    await until(forward.entered.is_set)
    queued = asyncio.create_task(probe.batcher.run([3], [1]))
    await until(lambda: probe.batcher.depth == 1)
    stopping = asyncio.create_task(probe.batcher.stop())
    await until(lambda: probe.batcher._closed)
    forward.gate.set()
    await stopping
    await running
    with pytest.raises(NotReady) as shut:
        await queued
    assert str(shut.value) == "server is shutting down"
    with pytest.raises(NotReady) as stopped:
        probe.batcher.submit_many([4], [1], None)
    assert str(stopped.value) == "batcher is not running"


async def test_expired_entries_are_dropped_with_the_exact_reason() -> None:
    forward = Forward()
    probe = await started(forward)
    with pytest.raises(DeadlineExceeded) as caught:
        await probe.batcher.run([1], [1], deadline=time.monotonic() - 1)
    assert str(caught.value) == "deadline passed while queued; not computed"
    assert forward.batches == []
    await probe.batcher.stop()


async def test_items_and_token_counts_must_pair_up() -> None:
    probe = await started(Forward())
    with pytest.raises(ValueError):
        probe.batcher.submit_many([1, 2], [1], None)
    await probe.batcher.stop()


async def test_batches_run_on_the_batchers_own_named_threads_which_stop_with_it() -> None:
    names: list[str] = []

    def record(items: list[int]) -> Sequence[int]:
        names.append(threading.current_thread().name)
        return items

    probe = await started(Forward(answer=record), workers=2)
    await asyncio.gather(*(probe.batcher.run([i], [1]) for i in range(4)))
    assert names and all(name.startswith(f"batch-{probe.model}") for name in names)
    assert not probe.batcher._running  # finished batches are not kept
    await probe.batcher.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith(f"batch-{probe.model}")]


async def test_the_batcher_groups_by_length_with_the_configured_ratio() -> None:
    lengths = [10, 200, 12, 190]

    async def batches(**config: object) -> list[list[int]]:
        forward = Forward()
        forward.gate.clear()
        probe = await started(forward, max_batch_size=8, max_batch_tokens=10_000, workers=1, **config)
        blocker = asyncio.create_task(probe.batcher.run([-1], [1]))
        await until(forward.entered.is_set)
        queued = asyncio.create_task(probe.batcher.run(list(range(4)), lengths))
        await until(lambda: probe.batcher.depth == 4)
        forward.gate.set()
        await asyncio.gather(blocker, queued)
        await probe.batcher.stop()
        return forward.batches[1:]

    # Similar lengths only (within 2x + 8 tokens of the oldest): the short ones, then the long ones.
    assert await batches(group_by_length=True, group_length_ratio=2.0) == [[0, 2], [1, 3]]
    # No ratio: all fit the token budget, so one batch.
    assert await batches(group_by_length=True, group_length_ratio=0) == [[0, 1, 2, 3]]
    # FIFO: the ratio is not used at all.
    assert await batches(group_by_length=False, group_length_ratio=2.0) == [[0, 1, 2, 3]]


async def test_failures_are_logged_with_the_model(caplog: pytest.LogCaptureFixture) -> None:
    def crash(items: list[int]) -> Sequence[int]:
        raise ValueError("bad shape")

    caplog.set_level(logging.DEBUG, logger="textserve.core.batcher")
    probe = await started(Forward(answer=crash))
    with pytest.raises(BackendFailure):
        await probe.batcher.run([1, 2], [1, 1])
    (record,) = [r for r in caplog.records if r.getMessage() == "batch forward failed"]
    assert (record.levelno, record.model, record.batch) == (logging.ERROR, probe.model, 2)  # type: ignore[attr-defined]
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    await probe.batcher.stop()

    caplog.clear()
    forward = Forward()
    forward.gate.clear()
    broken = await started(forward, max_batch_size=1)
    running = asyncio.create_task(broken.batcher.run([1], [1]))
    await until(forward.entered.is_set)

    def take_batch() -> list[object]:
        raise RuntimeError("loop crashed")

    broken.batcher._take_batch = take_batch  # type: ignore[method-assign,assignment]
    queued = asyncio.create_task(broken.batcher.run([2], [1]))
    await until(lambda: broken.batcher.depth == 1)
    forward.gate.set()
    await running
    with pytest.raises(BackendFailure):
        await asyncio.wait_for(queued, 30)
    (died,) = [r for r in caplog.records if r.getMessage() == "batcher loop died"]
    assert (died.levelno, died.model) == (logging.ERROR, broken.model)  # type: ignore[attr-defined]
    assert died.exc_info is not None and isinstance(died.exc_info[1], RuntimeError)
    await broken.batcher.stop()
