"""Response cache pieces without a model: keys, the memory LRU, fail-open reads and writes,
the circuit breaker, and coalescing of identical inputs in flight."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from textserve.core.breaker import CircuitBreaker
from textserve.core.cache import (
    CacheUnavailable,
    MemoryCacheBackend,
    ResponseCache,
    build_cache,
    key_maker,
    make_key,
)
from textserve.core.cache_through import CacheThrough
from textserve.core.coalesce import Coalescer, Publish
from textserve.core.config import CacheConfig, ConfigError
from textserve.core.errors import DeadlineExceeded
from textserve.core.redis_cache import RedisCacheBackend, connection_pool, redacted_url
from textserve.settings import load_settings

from tests.support import free_port, service_total, settle


def sample(name: str, service: str) -> float:
    return service_total(name, service)


# --- keys -------------------------------------------------------------------------------
def test_key_hashes_every_part_without_collisions() -> None:
    base = make_key("p:", "model", "rev1", "embed", b"\x01\x02")
    assert base.startswith("p:") and len(base) == len("p:") + 64
    assert make_key("p:", "model", "rev1", "embed", b"\x01\x02") == base
    assert make_key("p:", "model", "rev2", "embed", b"\x01\x02") != base
    assert make_key("p:", "model", "rev1", "embed", b"\x01\x03") != base
    assert make_key("p:", "ab", "c") != make_key("p:", "a", "bc")
    assert make_key("p:", 1) != make_key("p:", "1") != make_key("p:", 1.0)
    cache = ResponseCache(MemoryCacheBackend(10), CacheConfig(key_prefix="ts:"), "embedding")
    assert cache.key("m").startswith("ts:embedding:")


def test_a_key_maker_gives_the_keys_make_key_gives() -> None:
    """Keys made with the fixed parts hashed once are the same keys: entries written before
    stay readable, and each call starts from the fixed parts (no state carried over)."""
    make = key_maker("p:", "model", "rev1", "embed")
    first = make(b"\x01\x02")
    assert first == make_key("p:", "model", "rev1", "embed", b"\x01\x02")
    assert make(b"\x01\x03") == make_key("p:", "model", "rev1", "embed", b"\x01\x03")
    assert make(b"\x01\x02") == first
    assert make(7) == make_key("p:", "model", "rev1", "embed", 7)
    cache = ResponseCache(MemoryCacheBackend(10), CacheConfig(key_prefix="ts:"), "embedding")
    # The key maker the encoders use (through CacheThrough) makes the cache's own keys.
    assert CacheThrough(cache, "embedding").key_maker("m", 2)(b"x") == cache.key("m", 2, b"x")


# --- memory backend and ResponseCache ---------------------------------------------------
async def test_memory_backend_is_an_lru_with_expiry() -> None:
    backend = MemoryCacheBackend(max_entries=2)
    await backend.set_many([("a", b"1"), ("b", b"2")], ttl_s=60)
    assert await backend.get_many(["a"]) == [b"1"]  # a is now the most recently used
    await backend.set_many([("c", b"3")], ttl_s=60)
    assert await backend.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
    await backend.set_many([("d", b"4")], ttl_s=0)  # already expired
    assert await backend.get_many(["d"]) == [None]


async def test_response_cache_counts_hits_and_misses_and_skips_large_values() -> None:
    config = CacheConfig(max_entry_bytes=16)
    cache = ResponseCache(MemoryCacheBackend(100), config, "unit-memory")
    hits, misses = (
        sample("textserve_cache_hits_total", "unit-memory"),
        sample("textserve_cache_misses_total", "unit-memory"),
    )
    cache.put_many([("small", b"x" * 16), ("large", b"x" * 17)])
    await cache.flush()
    assert await cache.get_many(["small", "large", "absent"]) == [b"x" * 16, None, None]
    assert sample("textserve_cache_hits_total", "unit-memory") == hits + 1
    assert sample("textserve_cache_misses_total", "unit-memory") == misses + 2
    assert await cache.get_many([]) == []
    await cache.close()


def test_build_cache_follows_the_backend_setting() -> None:
    assert build_cache(CacheConfig(backend="none"), "x") is None
    memory = build_cache(CacheConfig(backend="memory"), "x")
    assert memory is not None and isinstance(memory.backend, MemoryCacheBackend)
    shared = build_cache(CacheConfig(backend="redis", url="redis://127.0.0.1:1/0"), "x")
    assert shared is not None and isinstance(shared.backend, RedisCacheBackend)


async def test_unreachable_redis_fails_open_then_is_skipped_without_io() -> None:
    """Connection refused: the read answers 'all misses', counts an error, opens the breaker;
    the next read is refused at once (no connection attempt) and counted too."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    config = CacheConfig(backend="redis", url=url, reconnect_backoff_min_s=30.0, reconnect_backoff_max_s=30.0)
    cache = build_cache(config, "unit-down")
    assert cache is not None and isinstance(cache.backend, RedisCacheBackend)
    errors = sample("textserve_cache_errors_total", "unit-down")
    assert await cache.get_many(["a", "b"]) == [None, None]
    assert cache.backend.breaker.state == "open"
    with pytest.raises(CacheUnavailable):
        await cache.backend.get_many(["a"])
    assert await cache.get_many(["a"]) == [None]
    cache.put_many([("a", b"1")])
    await cache.flush()
    assert sample("textserve_cache_errors_total", "unit-down") == errors + 3
    await cache.close()


# --- configuration ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": "http://cache:6379"}, "redis://, rediss://"),
        ({"tls_ca_file": "/ca.pem"}, "cache.tls_ca_file need cache.url to start with rediss://"),
        ({"url": "rediss://c:6380", "tls_cert_file": "/c.pem"}, "tls_cert_file and cache.tls_key_file"),
        ({"password": "a", "password_file": "/p"}, "not both"),
        ({"reconnect_backoff_min_s": 9.0, "reconnect_backoff_max_s": 1.0}, "reconnect_backoff_min_s=9.0"),
    ],
)
def test_bad_redis_settings_fail_at_startup(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, overrides={"cache": {"backend": "redis", **overrides}})
    assert message in str(caught.value)


def test_password_file_wins_over_the_url_and_is_never_logged(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    config = CacheConfig(backend="redis", url="redis://user:in-url@cache:6379/2", password_file=secret)
    pool = connection_pool(config)
    assert pool.connection_kwargs["password"] == "from-file"
    assert pool.connection_kwargs["username"] == "user"
    assert pool.connection_kwargs["db"] == 2
    assert pool.max_connections == config.pool_size
    assert redacted_url(config.url) == "redis://user:***@cache:6379/2"
    assert "in-url" not in redacted_url("redis://:in-url@cache:6379")


# --- circuit breaker --------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_backs_off_exponentially_with_one_probe_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(0.1, 1.0, clock=clock, rng=lambda: 0.0)
    assert breaker.allow() and breaker.state == "closed"
    assert breaker.failure() == pytest.approx(0.1)
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else keeps skipping while it runs
    assert breaker.failure() == pytest.approx(0.2)
    waits = []
    for _ in range(5):
        clock.now += 10
        assert breaker.allow()
        waits.append(breaker.failure())
    assert waits == pytest.approx([0.4, 0.8, 1.0, 1.0, 1.0])
    clock.now += 10
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()
    assert breaker.failure() == pytest.approx(0.1)  # backoff starts over


def test_breaker_ignores_late_failures_and_cancelled_probes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(0.1, 5.0, clock=clock, rng=lambda: 0.0)
    breaker.failure()
    for _ in range(50):  # calls in flight when Redis died fail too: the wait stays 0.1 s
        breaker.failure()
    assert breaker.retry_in == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.allow()
    breaker.release()  # the probe was cancelled by its caller
    assert breaker.allow()  # another caller may probe at once


# --- coalescing -------------------------------------------------------------------------
class Doubler:
    """compute() for a Coalescer: value = 2 * int(key); records every index it computes."""

    def __init__(self, gate: asyncio.Event | None = None, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.gate = gate
        self.fail = fail

    def for_keys(self, keys: list[str]):  # type: ignore[no-untyped-def]
        async def compute(indices: list[int], publish: Publish[int]) -> None:
            self.calls.append([keys[i] for i in indices])
            if self.gate is not None:
                await self.gate.wait()
            if self.fail:
                raise RuntimeError("leader failed")
            for i in indices:
                publish(i, 2 * int(keys[i]))

        return compute


async def test_duplicates_within_a_call_are_computed_once() -> None:
    coalescer: Coalescer[int] = Coalescer("unit-coalesce")
    before = sample("textserve_cache_coalesced_total", "unit-coalesce")
    keys = ["1", "2", "1", "1", "3"]
    doubler = Doubler()
    assert await coalescer.run(keys, doubler.for_keys(keys)) == [2, 4, 2, 2, 6]
    assert doubler.calls == [["1", "2", "3"]]
    assert sample("textserve_cache_coalesced_total", "unit-coalesce") == before + 2
    assert coalescer.in_flight == 0


async def test_identical_keys_in_flight_across_calls_are_computed_once() -> None:
    coalescer: Coalescer[int] = Coalescer("unit-coalesce")
    gate = asyncio.Event()
    leader, follower = Doubler(gate), Doubler()
    first_keys, second_keys = ["1", "2"], ["2", "3"]
    first = asyncio.create_task(coalescer.run(first_keys, leader.for_keys(first_keys)))
    await settle()
    second = asyncio.create_task(coalescer.run(second_keys, follower.for_keys(second_keys)))
    await settle()
    assert follower.calls == [["3"]] and not second.done()  # "2" is awaited, not recomputed
    gate.set()
    assert await first == [2, 4] and await second == [4, 6]
    assert leader.calls == [["1", "2"]] and coalescer.in_flight == 0


async def test_followers_take_over_when_the_leader_fails() -> None:
    coalescer: Coalescer[int] = Coalescer("unit-coalesce")
    gate = asyncio.Event()
    leader, follower = Doubler(gate, fail=True), Doubler()
    keys = ["7"]
    first = asyncio.create_task(coalescer.run(keys, leader.for_keys(keys)))
    await settle()
    second = asyncio.create_task(coalescer.run(keys, follower.for_keys(keys)))
    await settle()
    gate.set()
    with pytest.raises(RuntimeError, match="leader failed"):
        await first
    assert await second == [14]
    assert follower.calls == [["7"]]


async def test_follower_waits_no_longer_than_its_deadline_and_share_false_never_waits() -> None:
    coalescer: Coalescer[int] = Coalescer("unit-coalesce")
    gate = asyncio.Event()
    keys = ["5"]
    leader = asyncio.create_task(coalescer.run(keys, Doubler(gate).for_keys(keys)))
    await settle()
    with pytest.raises(DeadlineExceeded):
        await coalescer.run(keys, Doubler().for_keys(keys), deadline=time.monotonic() + 0.02)
    independent = Doubler()
    assert await coalescer.run(keys, independent.for_keys(keys), share=False) == [10]
    assert independent.calls == [["5"]]
    gate.set()
    assert await leader == [10]


async def test_a_follower_whose_deadline_has_passed_does_not_wait_at_all() -> None:
    coalescer: Coalescer[int] = Coalescer("unit-coalesce-late")
    gate = asyncio.Event()
    keys = ["4"]
    leader = asyncio.create_task(coalescer.run(keys, Doubler(gate).for_keys(keys)))
    await settle()
    late = asyncio.create_task(coalescer.run(keys, Doubler().for_keys(keys), deadline=time.monotonic() - 1))
    await settle()
    gate.set()  # the leader's value arrives, but the late follower had already given up
    with pytest.raises(DeadlineExceeded) as caught:
        await late
    assert (
        str(caught.value) == "deadline passed while waiting for an identical input another request computes"
    )
    assert await leader == [8]


async def test_with_one_attempt_a_call_never_follows() -> None:
    coalescer: Coalescer[int] = Coalescer("unit-coalesce-once", max_attempts=1)
    gate = asyncio.Event()
    keys = ["6"]
    leader = asyncio.create_task(coalescer.run(keys, Doubler(gate).for_keys(keys)))
    await settle()
    alone = Doubler()
    assert await asyncio.wait_for(coalescer.run(keys, alone.for_keys(keys)), 30) == [12]
    assert alone.calls == [["6"]]
    gate.set()
    assert await leader == [12]


async def test_only_a_value_actually_shared_counts_as_coalesced() -> None:
    service = "unit-coalesce-count"
    coalescer: Coalescer[int] = Coalescer(service)
    gate = asyncio.Event()
    keys = ["9"]
    before = sample("textserve_cache_coalesced_total", service)
    leader = asyncio.create_task(coalescer.run(keys, Doubler(gate, fail=True).for_keys(keys)))
    await settle()
    follower = asyncio.create_task(coalescer.run(keys, Doubler().for_keys(keys)))
    await settle()
    gate.set()
    with pytest.raises(RuntimeError):
        await leader
    assert await follower == [18]  # computed by the follower itself: nothing was coalesced
    assert sample("textserve_cache_coalesced_total", service) == before
    assert coalescer.in_flight == 0  # a failed leader leaves nothing in flight


async def test_a_published_key_leaves_the_in_flight_map_at_once_and_keeps_its_first_value() -> None:
    coalescer: Coalescer[int] = Coalescer("unit-coalesce-publish")
    gate = asyncio.Event()
    keys = ["1", "2"]

    async def compute(indices: list[int], publish: Publish[int]) -> None:
        publish(0, 10)
        publish(0, 99)  # a second value for the same key is ignored
        await gate.wait()
        publish(1, 20)

    call = asyncio.create_task(coalescer.run(keys, compute))
    await settle()
    assert coalescer.in_flight == 1  # "1" is published; only "2" is still being computed
    later = Doubler()
    assert await coalescer.run(["1"], later.for_keys(["1"])) == [2]  # not in flight: computed anew
    gate.set()
    assert await call == [10, 20]
    assert coalescer.in_flight == 0


async def test_a_compute_that_publishes_nothing_for_a_key_fails_the_call() -> None:
    coalescer: Coalescer[int] = Coalescer("unit-coalesce-missing")
    keys = ["1", "2"]

    async def compute(indices: list[int], publish: Publish[int]) -> None:
        publish(indices[0], 1)

    with pytest.raises(RuntimeError, match="compute published no value for 1 of 2 keys"):
        await coalescer.run(keys, compute)
    assert coalescer.in_flight == 0


# --- the response cache's failure handling, guard, metrics and logs -----------------------
class StuckBackend(MemoryCacheBackend):
    """A backend that hangs (reads, writes or both) until released, or fails with `error`."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__(max_entries=100)
        self.release = asyncio.Event()
        self.error = error
        self.stuck_reads = False
        self.stuck_writes = False
        self.written: list[str] = []

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.error is not None:
            raise self.error
        if self.stuck_reads:
            await self.release.wait()
        return await super().get_many(keys)

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        if self.error is not None:
            raise self.error
        if self.stuck_writes:
            await self.release.wait()
        self.written += [key for key, _ in items]
        await super().set_many(items, ttl_s)


def test_key_format_is_stable_across_versions() -> None:
    """Replicas of two versions share one Redis during a rolling upgrade: same input, same key."""
    assert make_key("p:", "a", b"b", 1, 2.5, True) == (
        "p:e5787987a629316998dab824315eccaaeb876f1ecf173a6380604df8da79b45e"
    )
    cache = ResponseCache(MemoryCacheBackend(10), CacheConfig(key_prefix="ts:"), "unit-cache-key")
    assert cache.key("a", 1) == make_key("ts:unit-cache-key:", "a", 1)
    assert cache.key("a", 1) != cache.key("a", 2)


async def test_a_hung_backend_is_cut_by_the_guard_and_fails_open() -> None:
    service = "unit-cache-guard"
    backend = StuckBackend()
    backend.stuck_reads = backend.stuck_writes = True
    cache = ResponseCache(backend, CacheConfig(timeout_ms=10), service)  # guard: 2 x 10 ms + 0.1 s
    errors = sample("textserve_cache_errors_total", service)
    assert await asyncio.wait_for(cache.get_many(["k"]), 30) == [None]
    cache.put_many([("k", b"v")])
    await asyncio.wait_for(cache.flush(), 30)
    assert backend.written == []
    assert sample("textserve_cache_errors_total", service) == errors + 2


async def test_failures_warn_once_per_interval_naming_the_service_and_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from textserve.core.cache import WARNING_INTERVAL_S, CacheUnavailable

    caplog.set_level(logging.DEBUG, logger="textserve.core.cache")
    service = "unit-cache-warn"
    error = ConnectionError("redis down")
    cache = ResponseCache(StuckBackend(error), CacheConfig(), service)
    errors = sample("textserve_cache_errors_total", service)

    def records() -> list[tuple[int, str, str, str]]:
        seen = [(r.levelno, r.getMessage(), r.service, r.error) for r in caplog.records]  # type: ignore[attr-defined]
        caplog.clear()
        return seen

    assert await cache.get_many(["a", "b"]) == [None, None]
    assert records() == [(logging.WARNING, "cache read failed; serving from the model", service, repr(error))]
    await cache.get_many(["a"])
    cache.put_many([("a", b"1")])
    await cache.flush()
    assert records() == [
        (logging.DEBUG, "cache read failed; serving from the model", service, repr(error)),
        (logging.DEBUG, "cache write failed", service, repr(error)),
    ]
    assert cache._last_warning is not None
    cache._last_warning -= WARNING_INTERVAL_S + 1  # the interval has passed
    cache.put_many([("a", b"1")])
    await cache.flush()
    assert records() == [(logging.WARNING, "cache write failed", service, repr(error))]
    assert sample("textserve_cache_errors_total", service) == errors + 4
    # A backend known to be down (its breaker open) is not worth a warning.
    unavailable = CacheUnavailable("breaker open")
    quiet = ResponseCache(StuckBackend(unavailable), CacheConfig(), "unit-cache-quiet")
    await quiet.get_many(["a"])
    assert records() == [
        (logging.DEBUG, "cache read failed; serving from the model", "unit-cache-quiet", repr(unavailable))
    ]


async def test_unreadable_entries_are_misses_and_logged_with_their_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="textserve.core.cache")
    service = "unit-cache-unreadable"
    backend = MemoryCacheBackend(10)
    await backend.set_many([("a", b"1"), ("b", b"x"), ("c", b"y")], ttl_s=60)
    cache = ResponseCache(backend, CacheConfig(), service)
    hits, misses = (
        sample("textserve_cache_hits_total", service),
        sample("textserve_cache_misses_total", service),
    )
    values = await cache.get_decoded(
        ["a", "b", "c", "d"], lambda entry: int(entry) if entry.isdigit() else None
    )
    assert values == [1, None, None, None]
    (record,) = [r for r in caplog.records if r.getMessage() == "ignored unreadable cache entries"]
    assert (record.levelno, record.service, record.entries) == (logging.DEBUG, service, 2)  # type: ignore[attr-defined]
    assert sample("textserve_cache_hits_total", service) == hits + 1
    assert sample("textserve_cache_misses_total", service) == misses + 3


async def test_read_and_write_durations_are_observed_under_the_service() -> None:
    service = "unit-cache-durations"
    cache = ResponseCache(MemoryCacheBackend(10), CacheConfig(), service)
    reads = sample("textserve_cache_read_duration_seconds_count", service)
    writes = sample("textserve_cache_write_duration_seconds_count", service)
    read_sum = sample("textserve_cache_read_duration_seconds_sum", service)
    write_sum = sample("textserve_cache_write_duration_seconds_sum", service)
    started = time.perf_counter()
    cache.put_many([("a", b"1")])
    await cache.flush()
    assert await cache.get_many(["a"]) == [b"1"]
    elapsed = time.perf_counter() - started
    assert sample("textserve_cache_read_duration_seconds_count", service) == reads + 1
    assert sample("textserve_cache_write_duration_seconds_count", service) == writes + 1
    assert 0 <= sample("textserve_cache_read_duration_seconds_sum", service) - read_sum <= elapsed
    assert 0 <= sample("textserve_cache_write_duration_seconds_sum", service) - write_sum <= elapsed


async def test_pending_writes_are_bounded_and_a_finished_write_frees_its_place() -> None:
    service = "unit-cache-pending"
    backend = StuckBackend()
    backend.stuck_writes = True
    cache = ResponseCache(backend, CacheConfig(max_pending_writes=1), service)
    errors = sample("textserve_cache_errors_total", service)
    cache.put_many([("a", b"1")])
    cache.put_many([("b", b"2")])  # one write is pending already: skipped, counted
    assert sample("textserve_cache_errors_total", service) == errors + 1
    backend.release.set()
    await cache.flush()
    assert backend.written == ["a"]
    cache.put_many([("c", b"3")])  # the finished write left room
    await cache.flush()
    assert backend.written == ["a", "c"]
    await cache.close()


async def test_the_memory_cache_is_built_for_its_service_with_its_size() -> None:
    cache = build_cache(CacheConfig(backend="memory", max_entries=2), "unit-cache-built")
    assert cache is not None and cache.service == "unit-cache-built"
    assert cache.key("x").startswith("textserve:unit-cache-built:")
    cache.put_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
    await cache.flush()
    assert await cache.get_many(["a", "b", "c"]) == [None, b"2", b"3"]  # the LRU kept two
