"""The prefix cache on its own: hash chains of whole blocks, LRU eviction, bounded memory."""

from __future__ import annotations

import torch
from textserve.generation.prefix_cache import PrefixCache, block_keys
from textserve.generation.scheduler import Scheduler, SchedulerLimits, SequenceSlot


def _kv(start: int, tokens: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers of [1, 1, tokens, 2] keys and values holding their positions."""
    positions = (
        torch.arange(start, start + tokens, dtype=torch.float32).view(1, 1, tokens, 1).expand(1, 1, tokens, 2)
    )
    return [(positions.clone(), -positions.clone()) for _ in range(2)]


def _fill(cache: PrefixCache, prompt: list[int], room: int = 10_000) -> None:
    for index, key, parent, tokens in cache.missing(prompt):
        assert cache.insert(key, parent, tokens, _kv(index * cache.block_tokens), room)
    cache.touch(prompt)


def test_a_prefix_is_found_in_whole_blocks_and_its_keys_come_back_in_order() -> None:
    cache = PrefixCache(64, block_tokens=4)
    prompt = list(range(11))  # two full blocks reusable (the last token is always computed)
    _fill(cache, prompt)
    assert cache.tokens == 8
    hit = cache.lookup([*range(10), 99, 98])
    assert hit.tokens == 8 and hit.kv is not None
    assert hit.kv[1][0][0, 0, :, 0].tolist() == list(range(8))
    assert cache.lookup([1, *range(1, 12)]).tokens == 0  # differs in the first block
    assert cache.lookup(list(range(8))).tokens == 4  # 8 tokens: only the first block may be reused


def test_block_keys_name_the_whole_prefix() -> None:
    first, other = block_keys([1, 2, 3, 4], 2, 2), block_keys([9, 9, 3, 4], 2, 2)
    assert first[1][1] == other[1][1] == (3, 4)  # the same tokens in block 1...
    assert first[1][0] != other[1][0]  # ...after a different prefix: a different key


def test_least_recently_used_blocks_are_evicted_within_capacity_and_room() -> None:
    cache = PrefixCache(8, block_tokens=4)
    _fill(cache, [1, 2, 3, 4, 0])
    _fill(cache, [5, 6, 7, 8, 0])
    assert cache.lookup([1, 2, 3, 4, 0]).tokens == 4  # block 1 is now the most recently used
    _fill(cache, [9, 9, 9, 9, 0])
    assert cache.tokens == 8
    assert cache.lookup([5, 6, 7, 8, 0]).tokens == 0 and cache.lookup([1, 2, 3, 4, 0]).tokens == 4
    ((_, key, parent, tokens),) = cache.missing([7, 7, 7, 7, 0])
    assert not cache.insert(key, parent, tokens, _kv(0), room=3)  # the KV budget leaves no room
    assert cache.evict(5) == 8 and cache.tokens == 0


def test_stored_blocks_are_copies() -> None:
    cache = PrefixCache(8, block_tokens=4)
    kv = _kv(0)
    ((_, key, parent, tokens),) = cache.missing([1, 2, 3, 4, 0])
    cache.insert(key, parent, tokens, kv, 100)
    kv[0][0].zero_()
    hit = cache.lookup([1, 2, 3, 4, 0])
    assert hit.kv is not None and hit.kv[0][0][0, 0, :, 0].tolist() == [0, 1, 2, 3]


def test_the_scheduler_counts_the_prefix_cache_and_evicts_it_for_a_waiting_sequence() -> None:
    cache = PrefixCache(64, block_tokens=4)
    scheduler = Scheduler(SchedulerLimits(4, 8, 40, 1000), prefix_pool=cache)
    _fill(cache, list(range(33)))  # 32 tokens cached
    scheduler.add(SequenceSlot(1, 4, 4))
    assert scheduler.schedule(0.0).prefill == [1]  # 8 reserved + 32 cached = 40: fits as is
    assert cache.tokens == 32 and scheduler.kv_room() == 0
    scheduler.add(SequenceSlot(2, 6, 6))
    assert scheduler.schedule(0.0).prefill == [2]  # 2 x 12 reserved: 8 cached tokens evicted
    assert cache.tokens == 16 and scheduler.stats().prefix_cached_tokens == 16
    assert scheduler.stats().kv_tokens_used == 24


def test_a_prefix_loses_its_last_blocks_before_its_first() -> None:
    cache = PrefixCache(8, block_tokens=4)
    _fill(cache, [1, 2, 3, 4, 5, 6, 7, 8, 0])  # two blocks: the cache is full
    _fill(cache, [9, 9, 9, 9, 0])  # one more: the first prompt's second block goes
    assert cache.lookup([1, 2, 3, 4, 5, 6, 7, 8, 0]).tokens == 4
    assert cache.lookup([9, 9, 9, 9, 0]).tokens == 4
