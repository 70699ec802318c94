"""One cache-through path for every service: read, coalesce in flight, compute misses, write back.

`CacheThrough.run(keys, compute, codec)` gives one value per key, each with whether it came
from the response cache:
- identical keys in flight at the same time are computed once (core/coalesce.py), with or
  without a cache; a key is in flight from before its cache read until its value is
  published, so concurrent callers also share one read;
- the keys a call leads are read in one batched read (MGET); entries the codec cannot
  decode count as misses and are overwritten;
- `compute(misses)` produces the rest; each value the codec can encode is written back in
  the background (fire-and-forget, bounded by ResponseCache) and shared with followers;
  one it cannot encode (None: an answer cut short for this caller) is neither stored nor
  shared;
- `skip_cache=True` neither reads nor writes and does not share in-flight results.
Cache failures never fail a request (ResponseCache fails open). Transport-free.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from textserve.core.cache import KeyPart, ResponseCache, key_maker, make_key
from textserve.core.coalesce import Coalescer, Publish

V = TypeVar("V")

Compute = Callable[[list[int]], Awaitable[Sequence[V]]]
"""`compute(indices)`: the values of keys[i] for each i, aligned with `indices` (or raises)."""


class Codec(Protocol[V]):
    """How a value is stored in the response cache."""

    def encode(self, value: V) -> bytes | None:
        """The cache entry of a value; None for a value not to be stored or shared."""
        ...

    def decode(self, entry: bytes) -> V | None:
        """A value from its entry; None when the entry is corrupt or of another shape."""
        ...


@dataclass(frozen=True)
class Through(Generic[V]):
    """One key's value and whether it came from the response cache."""

    value: V
    cached: bool
    shared: bool = True
    """False for a value that was neither stored nor handed to other callers."""


class CacheThrough(Generic[V]):
    """The cache-through path of one service (its cache may be None: coalescing only)."""

    def __init__(self, cache: ResponseCache | None, service: str) -> None:
        self.cache = cache
        self.service = service
        self.inflight: Coalescer[Through[V]] = Coalescer(cache.service if cache is not None else service)

    @property
    def in_flight(self) -> int:
        """Keys being computed now."""
        return self.inflight.in_flight

    @property
    def key_prefix(self) -> str:
        """What every key starts with (the cache's prefix when there is one)."""
        return self.cache.key_prefix if self.cache is not None else f"{self.service}:"

    def key(self, *parts: KeyPart) -> str:
        """The key of an output from every part that changes it (the cache's key when there is one)."""
        return make_key(self.key_prefix, *parts)

    def key_maker(self, *parts: KeyPart) -> Callable[[KeyPart], str]:
        """`last -> self.key(*parts, last)`, the fixed parts hashed once."""
        return key_maker(self.key_prefix, *parts)

    async def run(
        self,
        keys: Sequence[str],
        compute: Compute[V],
        codec: Codec[V],
        deadline: float | None = None,
        *,
        skip_cache: bool = False,
        model: str = "",
        version: str = "",
    ) -> list[Through[V]]:
        """One Through per key (aligned with `keys`); raises what `compute` raises, or
        DeadlineExceeded while waiting past `deadline` for another call's value. `model` and
        `version` label the cache metrics."""
        cache = None if skip_cache else self.cache

        async def lead(indices: list[int], publish: Publish[Through[V]]) -> None:
            misses = indices
            if cache is not None:
                found = await cache.get_decoded(
                    [keys[i] for i in indices], codec.decode, model=model, version=version
                )
                misses = []
                for index, value in zip(indices, found, strict=True):
                    if value is None:
                        misses.append(index)
                    else:
                        publish(index, Through(value, True))
            if not misses:
                return
            values = await compute(misses)
            writes: list[tuple[str, bytes]] = []
            for index, value in zip(misses, values, strict=True):
                entry = codec.encode(value)
                publish(index, Through(value, False, entry is not None))
                if entry is not None:
                    writes.append((keys[index], entry))
            if cache is not None and writes:
                cache.put_many(writes, model=model, version=version)

        return await self.inflight.run(
            keys,
            lead,
            deadline,
            share=not skip_cache,
            shared=lambda item: item.shared,
            labels=(model, version),
        )

    async def close(self) -> None:
        """Finishes the cache's writes and closes it."""
        if self.cache is not None:
            await self.cache.close()
