"""Automatic micro-batching: concurrent single-text calls of one process merged into one call.

`Merger.submit(key, text, deadline)` queues one text under `key` (the call's parameters: only
texts with equal parameters share a call) and answers that text's result. A group is sent
- at once (on the next turn of the event loop) when no merged call of its key is in flight,
  so a lone caller waits for nothing,
- else when it holds `max_texts` texts or `max_wait_s` after its first text, whichever comes
  first (callers arriving while the server is busy share the next call).

The merged call gets the latest deadline of its callers; each caller still waits only until
its own deadline (DeadlineExceeded, the call goes on for the others). A merged call answered
INVALID_ARGUMENT whose BadRequest detail names `texts[i]` fails only caller i (with the field
`texts[0]` of its own one-text call) and is sent again without it; any other failure fails
every caller of the call.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from textserve.core.errors import DeadlineExceeded, InvalidInput

T = TypeVar("T")

_TEXT_FIELD = re.compile(r"^texts\[(\d+)\](.*)$")

Send = Callable[[Hashable, list[str], float], Awaitable[list[T]]]
"""Sends one merged call: (key, texts, deadline) -> one result per text, in order."""


@dataclass
class _Waiter(Generic[T]):
    text: str
    deadline: float
    future: asyncio.Future[T]


@dataclass
class _Group(Generic[T]):
    waiters: list[_Waiter[T]] = field(default_factory=list)
    timer: asyncio.TimerHandle | asyncio.Handle | None = None


class Merger(Generic[T]):
    """Merges concurrent single-text calls of one kind (see the module docstring)."""

    def __init__(self, send: Send[T], max_texts: int = 64, max_wait_s: float = 0.001) -> None:
        self._send = send
        self.max_texts = max(1, max_texts)
        self.max_wait_s = max(0.0, max_wait_s)
        self._groups: dict[Hashable, _Group[T]] = {}
        self._in_flight: dict[Hashable, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        """Merged calls sent so far (for tests and benchmarks)."""

    async def submit(self, key: Hashable, text: str, deadline: float) -> T:
        """The result of `text`, computed in a call shared with concurrent submissions of `key`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(_retrieve)  # a caller gone at its deadline leaves no warning
        waiter: _Waiter[T] = _Waiter(text, deadline, future)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
            if self._in_flight.get(key, 0):
                group.timer = loop.call_later(self.max_wait_s, self._flush, key)
            else:
                group.timer = loop.call_soon(self._flush, key)
        group.waiters.append(waiter)
        if len(group.waiters) >= self.max_texts:
            self._flush(key)
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            raise DeadlineExceeded("deadline exceeded while the call was in flight") from None

    def _flush(self, key: Hashable) -> None:
        group = self._groups.pop(key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._run(key, group.waiters))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable, waiters: list[_Waiter[T]]) -> None:
        try:
            while waiters:
                now = time.monotonic()
                waiters = [w for w in waiters if not w.future.done() and w.deadline > now]
                if not waiters:
                    return
                self.calls += 1
                try:
                    results = await self._send(
                        key, [w.text for w in waiters], max(w.deadline for w in waiters)
                    )
                except InvalidInput as error:
                    index = _text_index(error.field)
                    if index is None or index >= len(waiters) or len(waiters) == 1:
                        _fail_all(waiters, error)
                        return
                    bad = waiters.pop(index)
                    _settle(bad.future, exception=_own_field(error))
                    continue  # the others, sent again without the bad text
                except BaseException as error:  # every caller of this call gets its failure
                    _fail_all(waiters, error)
                    if not isinstance(error, Exception):
                        raise
                    return
                for waiter, result in zip(waiters, results, strict=True):
                    _settle(waiter.future, result=result)
                return
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
            group = self._groups.get(key)
            if group is not None and not self._in_flight.get(key, 0):
                self._flush(key)  # nothing in flight any more: do not let the next group wait

    async def aclose(self) -> None:
        """Waits for the merged calls in flight."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _text_index(field_path: str) -> int | None:
    match = _TEXT_FIELD.match(field_path or "")
    return int(match.group(1)) if match else None


def _own_field(error: InvalidInput) -> InvalidInput:
    """The error as the caller's own one-text call sees it: `texts[0]...`."""
    match = _TEXT_FIELD.match(error.field)
    field_path = f"texts[0]{match.group(2)}" if match else error.field
    return InvalidInput(field_path, error.problem)


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, exception: BaseException | None = None
) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


def _fail_all(waiters: list[_Waiter[Any]], error: BaseException) -> None:
    for waiter in waiters:
        _settle(waiter.future, exception=error)
