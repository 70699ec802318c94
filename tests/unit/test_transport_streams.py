"""transport/streams.pump: bounded in-flight requests, answer order, errors, cleanup.

The sleeps inside the fake `answer` functions are the behaviour under test (answers that
take different times, so they finish out of order); no test sleeps to wait for a state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from textserve.transport.streams import pump

from tests.support import settle


async def _requests(items: list[int]) -> AsyncIterator[int]:
    for item in items:
        yield item


async def test_ordered_answers_follow_request_order_whatever_finishes_first() -> None:
    async def answer(position: int, delay: int) -> AsyncIterator[tuple[int, int]]:
        await asyncio.sleep(delay / 1000)
        yield position, delay

    delays = [30, 1, 20, 0, 10]
    got = [item async for item in pump(_requests(delays), answer, window=8)]
    assert got == list(enumerate(delays))


async def test_ordered_keeps_each_requests_answers_together() -> None:
    async def answer(position: int, count: int) -> AsyncIterator[str]:
        for index in range(count):
            await asyncio.sleep(0.001 * (3 - position))
            yield f"{position}.{index}"

    got = [item async for item in pump(_requests([2, 3, 1]), answer, window=8)]
    assert got == ["0.0", "0.1", "1.0", "1.1", "1.2", "2.0"]


async def test_unordered_answers_go_out_as_they_come() -> None:
    async def answer(position: int, delay: int) -> AsyncIterator[int]:
        await asyncio.sleep(delay / 1000)
        yield position

    got = [item async for item in pump(_requests([40, 0, 20]), answer, window=8, ordered=False)]
    assert got == [1, 2, 0]


@pytest.mark.parametrize("ordered", [True, False])
async def test_in_flight_requests_are_bounded(ordered: bool) -> None:
    running = 0
    peak = 0

    async def answer(position: int, request: int) -> AsyncIterator[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.002)
        running -= 1
        yield position

    got = [item async for item in pump(_requests(list(range(40))), answer, window=4, ordered=ordered)]
    assert sorted(got) == list(range(40))
    assert 1 < peak <= 4


async def test_a_failed_answer_ends_the_stream_after_the_earlier_answers() -> None:
    async def answer(position: int, request: int) -> AsyncIterator[int]:
        if position == 2:
            raise ValueError("bad request 2")
        await asyncio.sleep(0.005)
        yield position

    got: list[int] = []
    with pytest.raises(ValueError, match="bad request 2"):
        async for item in pump(_requests([0, 1, 2, 3]), answer, window=8):
            got.append(item)
    assert got == [0, 1]


async def test_a_failed_check_ends_the_stream_after_the_earlier_answers() -> None:
    started: list[int] = []

    def check(position: int, request: int) -> None:
        if request < 0:
            raise ValueError(f"stream[{position}] is negative")

    async def answer(position: int, request: int) -> AsyncIterator[int]:
        started.append(position)
        await asyncio.sleep(0.005)
        yield request

    got: list[int] = []
    with pytest.raises(ValueError, match=r"stream\[2\] is negative"):
        async for item in pump(_requests([5, 6, -1, 7]), answer, window=8, check=check):
            got.append(item)
    assert got == [5, 6]
    assert started == [0, 1]  # nothing after the bad message was started


@pytest.mark.parametrize("ordered", [True, False])
async def test_leaving_early_cancels_and_closes_running_answers(ordered: bool) -> None:
    closed: list[int] = []

    async def answer(position: int, request: int) -> AsyncIterator[int]:
        try:
            if position > 0:
                await asyncio.sleep(10)
            yield position
        finally:
            closed.append(position)

    stream = pump(_requests([0, 1, 2]), answer, window=8, ordered=ordered)
    assert await anext(stream) == 0
    await stream.aclose()
    await settle()
    assert sorted(closed) == [0, 1, 2]
