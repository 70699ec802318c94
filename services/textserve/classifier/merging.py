"""Merges concurrent embedding calls into fewer, larger calls while calls are in flight.

Under load, many Classify requests of one or a few texts each would each become one Embed
call, and gRPC overhead per call (on both services) would dominate. `CallMerger` lets up
to `max_in_flight` calls run at once; the texts of requests that arrive meanwhile wait and
go out together in the next call (up to `max_texts`). An idle service adds no delay: a
request that finds a free slot is sent at once. Requests that reject overlong texts
(truncate=False) are never merged, so one request's bad text cannot fail another's; a
merged call the embedding service rejects as INVALID_ARGUMENT is retried one request at a
time so each request gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from textserve.classifier.vector_source import EncoderDescription, Vectors, VectorSource
from textserve.core.errors import DeadlineExceeded, InvalidInput, TextserveError

EmbedCall = Callable[[Sequence[str], float | None, bool | None, bool], Awaitable[Vectors]]


@dataclass(eq=False)
class _Waiting:
    texts: Sequence[str]
    deadline: float | None
    key: tuple[bool | None, bool]
    future: asyncio.Future[Vectors] = field(repr=False)


def split_vectors(merged: Vectors, sizes: Sequence[int]) -> list[Vectors]:
    """One Vectors per member of a merged call (cached counts are not known per text: 0)."""
    parts: list[Vectors] = []
    start = 0
    for size in sizes:
        end = start + size
        parts.append(
            Vectors(
                values=merged.values[start:end],
                tokens=merged.tokens[start:end],
                truncated=merged.truncated[start:end],
                cached=merged.cached if len(sizes) == 1 else 0,
                tokenize_seconds=merged.tokenize_seconds,
                queue_seconds=merged.queue_seconds,
                inference_seconds=merged.inference_seconds,
            )
        )
        start = end
    return parts


class CallMerger:
    """Sends embed calls through `call`, merging requests that wait for a free slot."""

    def __init__(self, call: EmbedCall, max_in_flight: int, max_texts: int) -> None:
        self._call = call
        self._max_in_flight = max_in_flight
        self._max_texts = max_texts
        self._in_flight = 0
        self._waiting: list[_Waiting] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        return self._in_flight

    async def embed(
        self, texts: Sequence[str], deadline: float | None, truncate: bool | None, skip_cache: bool
    ) -> Vectors:
        """Vectors of texts: sent at once when a slot is free, else merged into the next call."""
        if truncate is False or len(texts) >= self._max_texts:
            return await self._call(texts, deadline, truncate, skip_cache)
        if self._in_flight < self._max_in_flight and not self._waiting:
            self._in_flight += 1
            try:
                return await self._call(texts, deadline, truncate, skip_cache)
            finally:
                self._in_flight -= 1
                self._dispatch()
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(texts, deadline, (truncate, skip_cache), future))
        self._dispatch()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise DeadlineExceeded("deadline passed while waiting for the embedding service") from None
        finally:
            if not future.done():
                future.cancel()  # a waiting request that left is not sent

    def _dispatch(self) -> None:
        """Starts merged calls while slots are free."""
        self._waiting = [item for item in self._waiting if not item.future.done()]
        while self._waiting and self._in_flight < self._max_in_flight:
            key = self._waiting[0].key
            group: list[_Waiting] = []
            count = 0
            for item in self._waiting:
                if item.key == key and (not group or count + len(item.texts) <= self._max_texts):
                    group.append(item)
                    count += len(item.texts)
            taken = set(map(id, group))
            self._waiting = [item for item in self._waiting if id(item) not in taken]
            self._in_flight += 1
            task = asyncio.create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[_Waiting]) -> None:
        try:
            truncate, skip_cache = group[0].key
            texts = [text for item in group for text in item.texts]
            deadlines = [item.deadline for item in group]
            deadline = (
                None if any(d is None for d in deadlines) else max(d for d in deadlines if d is not None)
            )
            try:
                merged = await self._call(texts, deadline, truncate, skip_cache)
            except TextserveError as error:
                if isinstance(error, InvalidInput) and len(group) > 1:
                    await asyncio.gather(*(self._alone(item) for item in group))
                    return
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(error)
                return
            except BaseException as error:
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                return
            for item, part in zip(group, split_vectors(merged, [len(i.texts) for i in group]), strict=True):
                if not item.future.done():
                    item.future.set_result(part)
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _alone(self, item: _Waiting) -> None:
        """One request sent by itself (after its merged call was rejected)."""
        truncate, skip_cache = item.key
        try:
            result = await self._call(item.texts, item.deadline, truncate, skip_cache)
        except Exception as error:
            if not item.future.done():
                item.future.set_exception(error)
            return
        if not item.future.done():
            item.future.set_result(result)

    async def close(self) -> None:
        """Waits for merged calls still running."""
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._tasks), return_exceptions=True)


class MergingVectorSource:
    """A vector source whose embed calls go through a CallMerger (used for remote sources)."""

    def __init__(self, inner: VectorSource, max_in_flight: int, max_texts: int) -> None:
        self.inner = inner
        self.location = inner.location
        self.merger = CallMerger(inner.embed, max_in_flight, max_texts)

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.merger.close()
        await self.inner.stop()

    async def describe(self, deadline: float | None) -> EncoderDescription:
        return await self.inner.describe(deadline)

    async def embed(
        self, texts: Sequence[str], deadline: float | None, truncate: bool | None, skip_cache: bool
    ) -> Vectors:
        return await self.merger.embed(texts, deadline, truncate, skip_cache)
