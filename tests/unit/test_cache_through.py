"""The one cache-through path (core/cache_through.py) without a model: one read for a call's
keys, identical keys in flight computed once across concurrent callers, background
write-back, skip_cache (no read, no write, no sharing), values that are neither stored nor
shared, and cache errors failing open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from textserve.core.cache import MemoryCacheBackend, ResponseCache, make_key
from textserve.core.cache_through import CacheThrough
from textserve.core.config import CacheConfig
from textserve.core.errors import DeadlineExceeded

from tests.support import service_total, settle, wait_until


def sample(name: str, service: str) -> float:
    return service_total(name, service)


class IntCodec:
    """Ints as decimal text; negative values are answers not to keep."""

    def encode(self, value: int) -> bytes | None:
        return None if value < 0 else str(value).encode()

    def decode(self, entry: bytes) -> int | None:
        return int(entry) if entry.isdigit() else None


class CountingBackend(MemoryCacheBackend):
    """The memory LRU, counting reads and writes; `broken` makes every call fail."""

    def __init__(self) -> None:
        super().__init__(max_entries=100)
        self.reads: list[list[str]] = []
        self.writes: list[list[str]] = []
        self.broken = False

    async def seed(self, key: str, value: bytes) -> None:
        """Stores an entry without counting it as a write."""
        await super().set_many([(key, value)], ttl_s=60)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.reads.append(list(keys))
        if self.broken:
            raise ConnectionError("cache down")
        return await super().get_many(keys)

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        self.writes.append([key for key, _ in items])
        if self.broken:
            raise ConnectionError("cache down")
        await super().set_many(items, ttl_s)


class Tripler:
    """compute(): value = 3 * int(key) (or `value` when set); records every call's keys."""

    def __init__(self, keys: Sequence[str], gate: asyncio.Event | None = None, value: int | None = None):
        self.keys = keys
        self.gate = gate
        self.value = value
        self.calls: list[list[str]] = []

    async def __call__(self, indices: list[int]) -> list[int]:
        self.calls.append([self.keys[i] for i in indices])
        if self.gate is not None:
            await self.gate.wait()
        return [3 * int(self.keys[i]) if self.value is None else self.value for i in indices]


def through(service: str) -> tuple[CacheThrough[int], CountingBackend]:
    backend = CountingBackend()
    cache = ResponseCache(backend, CacheConfig(), service)
    return CacheThrough(cache, service), backend


async def test_one_read_for_the_call_then_compute_the_misses_and_write_them_back() -> None:
    results, backend = through("unit-through")
    await backend.seed("2", b"60")  # a stored value wins over computing
    keys = ["1", "2", "3", "1"]
    compute = Tripler(keys)
    items = await results.run(keys, compute, IntCodec())
    assert [(item.value, item.cached) for item in items] == [(3, False), (60, True), (9, False), (3, False)]
    assert backend.reads == [["1", "2", "3"]] and compute.calls == [["1", "3"]]
    assert results.cache is not None
    await results.cache.flush()
    assert backend.writes == [["1", "3"]]
    again = Tripler(keys)
    assert [item.cached for item in await results.run(keys, again, IntCodec())] == [True] * 4
    assert again.calls == [] and results.in_flight == 0


async def test_concurrent_callers_share_one_read_and_one_computation() -> None:
    results, backend = through("unit-through-share")
    before = sample("textserve_cache_coalesced_total", "unit-through-share")
    gate, later = asyncio.Event(), asyncio.Event()
    leader = Tripler(["4", "5"], gate)
    first = asyncio.create_task(results.run(["4", "5"], leader, IntCodec()))
    await wait_until(lambda: leader.calls)
    followers = [Tripler(["5", "6"], later) for _ in range(3)]
    rest = [asyncio.create_task(results.run(["5", "6"], f, IntCodec())) for f in followers]
    await settle()
    assert results.in_flight == 3  # "4", "5" led by the first call, "6" by the first follower
    gate.set()
    later.set()
    assert [item.value for item in await first] == [12, 15]
    for task in rest:
        assert [item.value for item in await task] == [15, 18]
    assert leader.calls == [["4", "5"]]
    assert sorted(call for f in followers for call in f.calls) == [["6"]]  # "5" was never recomputed
    assert sorted(backend.reads) == [["4", "5"], ["6"]]
    assert sample("textserve_cache_coalesced_total", "unit-through-share") == before + 3 + 2
    assert results.in_flight == 0


async def test_skip_cache_neither_reads_nor_writes_nor_shares() -> None:
    results, backend = through("unit-through-skip")
    await backend.seed("7", b"70")
    gate = asyncio.Event()
    leader = asyncio.create_task(results.run(["7", "8"], Tripler(["7", "8"], gate), IntCodec()))
    await settle()
    reads = list(backend.reads)
    fresh = Tripler(["7", "8", "8"])
    items = await results.run(["7", "8", "8"], fresh, IntCodec(), skip_cache=True)
    assert [(item.value, item.cached) for item in items] == [(21, False), (24, False), (24, False)]
    assert fresh.calls == [["7", "8"]]  # duplicates inside the call are still computed once
    assert backend.reads == reads  # not read, and did not wait for the leader
    assert results.cache is not None
    await results.cache.flush()
    assert backend.writes == []
    gate.set()
    assert [item.value for item in await leader] == [70, 24]


async def test_cache_errors_fail_open() -> None:
    results, backend = through("unit-through-down")
    backend.broken = True
    errors = sample("textserve_cache_errors_total", "unit-through-down")
    compute = Tripler(["1", "2"])
    items = await results.run(["1", "2"], compute, IntCodec())
    assert [(item.value, item.cached) for item in items] == [(3, False), (6, False)]
    assert results.cache is not None
    await results.cache.flush()
    assert compute.calls == [["1", "2"]] and backend.writes == [["1", "2"]]
    assert sample("textserve_cache_errors_total", "unit-through-down") == errors + 2  # read and write


async def test_corrupt_entries_are_misses_and_get_overwritten() -> None:
    results, backend = through("unit-through-corrupt")
    await backend.seed("3", b"not a number")
    items = await results.run(["3"], Tripler(["3"]), IntCodec())
    assert [(item.value, item.cached) for item in items] == [(9, False)]
    assert results.cache is not None
    await results.cache.flush()
    assert await backend.get_many(["3"]) == [b"9"]


async def test_a_value_the_codec_refuses_is_neither_stored_nor_shared() -> None:
    results, backend = through("unit-through-private")
    gate = asyncio.Event()
    leader = asyncio.create_task(results.run(["9"], Tripler(["9"], gate, value=-1), IntCodec()))
    await settle()
    follower = Tripler(["9"])
    second = asyncio.create_task(results.run(["9"], follower, IntCodec()))
    await settle()
    assert follower.calls == []  # waiting for the leader
    gate.set()
    assert [(item.value, item.shared) for item in await leader] == [(-1, False)]
    assert [(item.value, item.cached) for item in await second] == [(27, False)]
    assert follower.calls == [["9"]]  # took the key over
    assert results.cache is not None
    await results.cache.flush()
    assert backend.writes == [["9"]]  # only the follower's value


async def test_without_a_cache_it_still_coalesces() -> None:
    results: CacheThrough[int] = CacheThrough(None, "unit-through-nocache")
    assert results.key("a", 1).startswith("unit-through-nocache:")
    gate = asyncio.Event()
    leader = Tripler(["2"], gate)
    first = asyncio.create_task(results.run(["2"], leader, IntCodec()))
    await settle()
    follower = Tripler(["2"])
    second = asyncio.create_task(results.run(["2"], follower, IntCodec()))
    await settle()
    gate.set()
    assert [item.value for item in await first] == [6] == [item.value for item in await second]
    assert follower.calls == [] and results.in_flight == 0


async def test_a_failing_compute_fails_only_its_own_caller() -> None:
    results, _ = through("unit-through-fail")

    release = asyncio.Event()

    async def broken(indices: list[int]) -> list[int]:
        await release.wait()
        raise RuntimeError("model failed")

    first = asyncio.create_task(results.run(["1"], broken, IntCodec()))
    await settle()
    follower = Tripler(["1"])
    second = asyncio.create_task(results.run(["1"], follower, IntCodec()))
    await settle()  # the follower waits for the leader
    release.set()
    with pytest.raises(RuntimeError, match="model failed"):
        await first
    assert [item.value for item in await second] == [3]
    assert follower.calls == [["1"]]


async def test_a_follower_waits_no_longer_than_its_deadline() -> None:
    results, _ = through("unit-through-deadline")
    gate = asyncio.Event()
    leader = asyncio.create_task(results.run(["3"], Tripler(["3"], gate), IntCodec()))
    await settle()
    with pytest.raises(DeadlineExceeded, match="deadline passed while waiting"):
        await asyncio.wait_for(
            results.run(["3"], Tripler(["3"]), IntCodec(), deadline=time.monotonic() + 0.02), 30
        )
    gate.set()
    assert [item.value for item in await leader] == [9]


async def test_skip_cache_computes_even_while_the_same_key_is_in_flight() -> None:
    results, _ = through("unit-through-skip-inflight")
    gate = asyncio.Event()
    leader = asyncio.create_task(results.run(["5"], Tripler(["5"], gate), IntCodec()))
    await settle()
    alone = Tripler(["5"], value=50)
    items = await asyncio.wait_for(results.run(["5"], alone, IntCodec(), skip_cache=True), 30)
    assert [item.value for item in items] == [50] and alone.calls == [["5"]]
    gate.set()
    assert [item.value for item in await leader] == [15]  # the leader's own value, not shared


async def test_keys_without_a_cache_depend_on_every_part() -> None:
    results: CacheThrough[int] = CacheThrough(None, "unit-through-keys")
    assert results.key("a", 1) == make_key("unit-through-keys:", "a", 1)
    assert results.key("a", 1) != results.key("a", 2) != results.key("b", 2)


async def test_coalesced_values_are_counted_under_the_caches_service() -> None:
    backend = CountingBackend()
    cache = ResponseCache(backend, CacheConfig(), "unit-through-label")
    results: CacheThrough[int] = CacheThrough(cache, "unit-through-other-name")
    before = sample("textserve_cache_coalesced_total", "unit-through-label")
    await results.run(["4", "4"], Tripler(["4", "4"]), IntCodec())
    assert sample("textserve_cache_coalesced_total", "unit-through-label") == before + 1
    assert sample("textserve_cache_coalesced_total", "unit-through-other-name") == 0


async def test_close_finishes_the_writes() -> None:
    results, backend = through("unit-through-close")
    await results.run(["1", "2"], Tripler(["1", "2"]), IntCodec())
    await results.close()
    assert sorted(key for write in backend.writes for key in write) == ["1", "2"]
    await CacheThrough(None, "unit-through-close-none").close()  # nothing to close
