"""Request coalescing: identical inputs in flight at the same time are computed once.

A `Coalescer` keeps an in-flight map, key -> future of the value being computed right
now. `run(keys, compute)` splits a call's keys into those nobody is computing (this call
leads them: it registers them, then calls `compute` for them once) and those another call
is already computing (it follows: it waits for that call's value). Duplicates within one
call are computed once too. Keys are the response-cache keys, so "identical" means the
same model, revision, parameters and input; a key is in flight from before the cache read
until its value is published, so concurrent callers also share one cache read.

If a leader fails or is cancelled (its client left, its deadline passed), its followers
are not failed with it: they take the keys over and compute them themselves; so do they
when the leader's value is one that `run(shared=...)` says is not for sharing (an
answer cut short for that caller only). A follower waits no longer than its own
deadline. Futures are only ever given a result or cancelled, never an exception, so
nothing is left unretrieved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from textserve.core import metrics
from textserve.core.errors import DeadlineExceeded

V = TypeVar("V")

Publish = Callable[[int, V], None]
"""`publish(index, value)`: hands the value of keys[index] to the caller and its followers."""

Compute = Callable[[list[int], Publish[V]], Awaitable[None]]
"""`compute(indices, publish)`: computes keys[i] for each i and publishes each value (or raises)."""


class Coalescer(Generic[V]):
    """An in-flight map for one service; see the module docstring."""

    def __init__(self, service: str, max_attempts: int = 3) -> None:
        self.service = service
        self.max_attempts = max_attempts
        """Times a call follows other callers before it computes everything left itself."""
        self._inflight: dict[str, asyncio.Future[V]] = {}

    @property
    def in_flight(self) -> int:
        """Keys being computed now."""
        return len(self._inflight)

    async def run(
        self,
        keys: Sequence[str],
        compute: Compute[V],
        deadline: float | None = None,
        *,
        share: bool = True,
        shared: Callable[[V], bool] | None = None,
        labels: tuple[str, str] = ("", ""),
    ) -> list[V]:
        """Values for `keys` (aligned with them), each computed once.

        `share=False` neither joins nor leads other calls' work (duplicates within the call
        are still computed once). `shared(value)` false keeps a computed value to this call:
        its followers compute the key themselves. `deadline` is an absolute
        time.monotonic() value; waiting for another call past it raises DeadlineExceeded.
        `labels`: (model, version) of the metrics ("" where unknown).
        """
        first: dict[str, int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        results: dict[str, V] = {}
        coalesced = len(keys) - len(first)
        pending = list(first)
        for attempt in range(1, self.max_attempts + 1):
            sharing = share and attempt < self.max_attempts
            lead: list[str] = []
            follow: dict[str, asyncio.Future[V]] = {}
            for key in pending:
                future = self._inflight.get(key) if sharing else None
                if future is None:
                    lead.append(key)
                else:
                    follow[key] = future
            if lead:
                await self._lead(lead, keys, first, compute, results, sharing, shared)
            pending = await self._follow(follow, results, deadline) if follow else []
            coalesced += len(follow) - len(pending)
            if not pending:
                break
        if coalesced:
            metrics.child(metrics.CACHE_COALESCED, self.service, *labels).inc(coalesced)
        return [results[key] for key in keys]

    async def _lead(
        self,
        lead: list[str],
        keys: Sequence[str],
        first: dict[str, int],
        compute: Compute[V],
        results: dict[str, V],
        share: bool,
        shared: Callable[[V], bool] | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[V]] = {key: loop.create_future() for key in lead}
        if share:
            self._inflight.update(futures)

        def publish(index: int, value: V) -> None:
            key = keys[index]
            future = futures.get(key)
            if future is None or future.done():
                return
            results[key] = value
            if shared is None or shared(value):
                future.set_result(value)
            else:
                future.cancel()  # followers take the key over
            if self._inflight.get(key) is future:
                del self._inflight[key]

        try:
            await compute([first[key] for key in lead], publish)
        finally:
            for key, future in futures.items():
                if not future.done():
                    future.cancel()
                if self._inflight.get(key) is future:
                    del self._inflight[key]
        missing = [key for key in lead if key not in results]
        if missing:
            raise RuntimeError(f"compute published no value for {len(missing)} of {len(lead)} keys")

    async def _follow(
        self, follow: dict[str, asyncio.Future[V]], results: dict[str, V], deadline: float | None
    ) -> list[str]:
        """Waits for other calls' values; returns the keys whose leader gave up."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        _done, not_done = await asyncio.wait(follow.values(), timeout=timeout)
        if not_done:
            raise DeadlineExceeded(
                "deadline passed while waiting for an identical input another request computes"
            )
        failed: list[str] = []
        for key, future in follow.items():
            if future.cancelled():
                failed.append(key)
            else:
                results[key] = future.result()
        return failed
