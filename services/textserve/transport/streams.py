"""Pumping a bidirectional stream: many requests of one call in flight, their answers streamed back.

`pump` reads a call's request stream and answers each request in its own task, with a
bounded number of requests in flight, and yields the answers:
- `ordered=True` (EmbedStream): in request order; each request's answers all go out
  before the next request's. At most `window` requests are in flight (started, and not
  all their answers sent).
- `ordered=False` (ModelStreamInfer, whose answers carry their request's id): as they
  come; at most `window` requests run at once and `buffer` answers wait to be sent.

`check(position, request)` runs as each request is read; an exception from it, from an
answer, or from the request stream ends the call with that exception, after the answers
already queued ahead of it (in request order: those to every earlier request) have been
sent. When the call ends early (client gone, an error), every answer still running is
cancelled and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Generic, TypeVar

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
ItemT = TypeVar("ItemT")

Answer = Callable[[int, RequestT], AsyncIterator[ResponseT]]
"""Answers the request at a position of the stream (0-based)."""
Check = Callable[[int, RequestT], None]
"""Raises for a request that must end the stream."""


class _Lane(Generic[ResponseT]):
    """The answers of one request, filled by its own task."""

    def __init__(self, answers: AsyncIterator[ResponseT], buffer: int) -> None:
        self.queue: asyncio.Queue[ResponseT] = asyncio.Queue(buffer)
        self.task = asyncio.create_task(_fill(self.queue, answers))


async def _fill(queue: asyncio.Queue[ItemT], answers: AsyncIterator[ItemT]) -> None:
    """Moves `answers` into `queue`, closing the iterator whatever happens."""
    try:
        async for answer in answers:
            await queue.put(answer)
    finally:
        aclose = getattr(answers, "aclose", None)
        if aclose is not None:
            await aclose()


async def _drain(queue: asyncio.Queue[ItemT], producer: asyncio.Task[None]) -> AsyncIterator[ItemT]:
    """The items of `queue` until `producer` has ended and the queue is empty; then re-raises
    the producer's failure, if any."""
    while True:
        if queue.empty() and producer.done():
            producer.result()
            return
        get = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({get, producer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():
                get.cancel()  # the item, if any, stays queued
        if get.done():  # a cancelled `get` is still pending here
            yield get.result()


async def pump(
    requests: AsyncIterator[RequestT],
    answer: Answer[RequestT, ResponseT],
    *,
    window: int,
    ordered: bool = True,
    buffer: int = 256,
    check: Check[RequestT] | None = None,
) -> AsyncGenerator[ResponseT, None]:
    """Answers every request of `requests` with `answer`, `window` at a time (module docstring)."""
    slots = asyncio.Semaphore(window)
    tasks: set[asyncio.Task[None]] = set()
    lanes: asyncio.Queue[_Lane[ResponseT]] = asyncio.Queue()  # ordered: one per request, in order
    shared: asyncio.Queue[ResponseT] = asyncio.Queue(buffer)  # unordered: every request's answers

    async def run_unordered(answers: AsyncIterator[ResponseT]) -> None:
        try:
            await _fill(shared, answers)
        finally:
            slots.release()

    async def read() -> None:
        position = 0
        async for request in requests:
            if check is not None:
                check(position, request)
            await slots.acquire()
            if ordered:
                lane = _Lane(answer(position, request), buffer)
                task = lane.task
                lanes.put_nowait(lane)
            else:
                task = asyncio.create_task(run_unordered(answer(position, request)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            position += 1
        while tasks and not ordered:
            await asyncio.gather(*tasks)

    reader = asyncio.create_task(read())
    try:
        if ordered:
            async for lane in _drain(lanes, reader):
                async for item in _drain(lane.queue, lane.task):
                    yield item
                slots.release()
        else:
            async for item in _drain(shared, reader):
                yield item
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
