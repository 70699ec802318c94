"""Response cache: key building, fail-open batched reads, bounded fire-and-forget writes.

`ResponseCache` is what services use. It hashes every part that changes an output into
the key, reads many keys at once, never fails a request (errors and timeouts are counted
in textserve_cache_errors_total and the request is served from the model), and writes
in the background with a bounded set of tasks. Backends: `MemoryCacheBackend` (an
in-process LRU, the embedded default) and Redis (core/redis_cache.py). Backends bound
their own latency (Redis by timeout_ms, with a circuit breaker while it is down); the
cache adds only a looser safety net. Identical inputs in flight are computed once by
core/coalesce.py, keyed by the same keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from textserve.core import metrics
from textserve.core.config import CacheConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

WARNING_INTERVAL_S = 10.0
"""Least time between two logged cache warnings (every failure is still counted)."""


class CacheUnavailable(Exception):
    """The backend is skipping calls for a while after failures (no I/O was done)."""


class CacheBackend(Protocol):
    """Storage behind the response cache."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values for keys (None where absent), in one round trip."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        """Stores values with a time to live, in one round trip."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


class MemoryCacheBackend:
    """In-process LRU with per-entry expiry (one replica only)."""

    def __init__(self, max_entries: int) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        values: list[bytes | None] = []
        for key in keys:
            entry = self._data.get(key)
            if entry is None or entry[0] <= now:
                if entry is not None:
                    del self._data[key]
                values.append(None)
                continue
            self._data.move_to_end(key)
            values.append(entry[1])
        return values

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_s: int) -> None:
        expires = time.monotonic() + ttl_s
        for key, value in items:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
        while len(self._data) > self._max_entries:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


KeyPart = str | bytes | int | float | bool


def _hash_parts(digest: Any, parts: Sequence[KeyPart]) -> None:
    for part in parts:
        data = part if isinstance(part, bytes) else repr(part).encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)


def make_key(prefix: str, *parts: KeyPart) -> str:
    """`prefix` + sha256 of every part, each length-prefixed so no two part lists collide."""
    digest = hashlib.sha256()
    _hash_parts(digest, parts)
    return prefix + digest.hexdigest()


def key_maker(prefix: str, *parts: KeyPart) -> Callable[[KeyPart], str]:
    """`last -> make_key(prefix, *parts, last)`, with the hash of the fixed `parts` computed once
    (a model's name, revision and settings before each input's own bytes)."""
    head = hashlib.sha256()
    _hash_parts(head, parts)

    def key(last: KeyPart) -> str:
        digest = head.copy()
        _hash_parts(digest, (last,))
        return prefix + digest.hexdigest()

    return key


class ResponseCache:
    """The cache as services see it: fail-open reads, bounded background writes."""

    def __init__(self, backend: CacheBackend, config: CacheConfig, service: str) -> None:
        self.backend = backend
        self.config = config
        self.service = service
        self._writes: set[asyncio.Task[None]] = set()
        # Backends enforce timeout_ms themselves; this only catches one that hangs anyway.
        self._guard_s = 2.0 * config.timeout_ms / 1000.0 + 0.1
        self._last_warning: float | None = None

    def key(self, *parts: KeyPart) -> str:
        """A cache key for this service from every output-changing part."""
        return make_key(self.key_prefix, *parts)

    @property
    def key_prefix(self) -> str:
        """What every key of this service starts with."""
        return f"{self.config.key_prefix}{self.service}:"

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values for keys; on any backend error or timeout, all None (and counted)."""
        return await self.get_decoded(keys, _as_is)

    async def get_decoded(
        self,
        keys: Sequence[str],
        decode: Callable[[bytes], T | None],
        *,
        model: str = "",
        version: str = "",
    ) -> list[T | None]:
        """Values for keys, each passed through `decode`, in one backend read.

        An entry `decode` rejects (returns None for: corrupt, wrong shape) counts as a miss;
        the caller recomputes it and its write overwrites the entry. On any backend error
        or timeout, all None (and counted as an error). `model` and `version` label the
        metrics ("" where the caller does not know them).
        """
        if not keys:
            return []
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._guard_s):
                raw = await self.backend.get_many(keys)
        except Exception as exc:
            self._error("cache read failed; serving from the model", exc, model, version)
            return [None] * len(keys)
        labels = (self.service, model, version)
        metrics.child(metrics.CACHE_READ_DURATION, *labels).observe(time.perf_counter() - started)
        values = [None if value is None else decode(value) for value in raw]
        rejected = sum(value is None for value in values) - sum(value is None for value in raw)
        if rejected:
            log.debug(
                "ignored unreadable cache entries", extra={"service": self.service, "entries": rejected}
            )
        hits = sum(value is not None for value in values)
        if hits:
            metrics.child(metrics.CACHE_HITS, *labels).inc(hits)
        if len(values) - hits:
            metrics.child(metrics.CACHE_MISSES, *labels).inc(len(values) - hits)
        return values

    def put_many(self, items: Sequence[tuple[str, bytes]], *, model: str = "", version: str = "") -> None:
        """Stores values in the background; too-large values and overflowing writes are skipped."""
        kept = [(key, value) for key, value in items if len(value) <= self.config.max_entry_bytes]
        if not kept:
            return
        if len(self._writes) >= self.config.max_pending_writes:
            metrics.child(metrics.CACHE_ERRORS, self.service, model, version).inc()
            return
        task = asyncio.create_task(self._write(kept, model, version))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, items: Sequence[tuple[str, bytes]], model: str = "", version: str = "") -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._guard_s):
                await self.backend.set_many(items, self.config.ttl_s)
        except Exception as exc:
            self._error("cache write failed", exc, model, version)
            return
        metrics.child(metrics.CACHE_WRITE_DURATION, self.service, model, version).observe(
            time.perf_counter() - started
        )

    def _error(self, message: str, exc: Exception, model: str = "", version: str = "") -> None:
        """Counts a failed operation; logs at most one warning per WARNING_INTERVAL_S."""
        metrics.child(metrics.CACHE_ERRORS, self.service, model, version).inc()
        now = time.monotonic()
        recent = self._last_warning is not None and now - self._last_warning < WARNING_INTERVAL_S
        if isinstance(exc, CacheUnavailable) or recent:
            log.debug(message, extra={"service": self.service, "error": repr(exc)})
            return
        self._last_warning = now
        log.warning(message, extra={"service": self.service, "error": repr(exc)})

    async def flush(self) -> None:
        """Waits for background writes (tests and shutdown)."""
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def close(self) -> None:
        """Finishes writes and closes the backend."""
        await self.flush()
        await self.backend.close()


def _as_is(value: bytes) -> bytes:
    return value


def build_cache(config: CacheConfig, service: str) -> ResponseCache | None:
    """The configured cache for a service, or None when caching is off."""
    if config.backend == "none":
        return None
    if config.backend == "memory":
        return ResponseCache(MemoryCacheBackend(config.max_entries), config, service)
    from textserve.core.redis_cache import RedisCacheBackend

    return ResponseCache(RedisCacheBackend(config), config, service)
