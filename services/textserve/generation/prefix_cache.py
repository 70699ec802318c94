"""Prompt-prefix KV reuse: the keys and values of full token blocks, found by hash chains.

A prompt is cut into blocks of `block_tokens` tokens. Block i is keyed by a hash of
(key of block i-1, the block's tokens), so a key names a whole prefix, not only its last
block (vLLM's automatic prefix caching). A block holds copies of the keys and values of
its positions in every layer, so nothing in the cache is shared with a running sequence
and evicting a block never touches one. A later prompt that starts with the same blocks
gets their keys and values (concatenated, as the past of its own prefill) and only its
uncached suffix is computed; at least the last prompt token is always computed, for the
logits of the first new token.

Memory is bounded: `capacity_tokens` (cached blocks x block_tokens) at most, least
recently used blocks evicted first (within a prefix, its last blocks first); the scheduler
counts `tokens` in its KV budget and calls `evict` when a waiting sequence needs the room
(generation/scheduler.py).
Used by the engine thread only (no lock).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer (keys, values), each [1, heads, positions, head_dim]."""


@dataclass
class _Block:
    parent: int | None
    tokens: tuple[int, ...]
    kv: LayerKV


@dataclass(frozen=True)
class PrefixHit:
    """The cached part of a prompt: its length in tokens and its keys and values per layer."""

    tokens: int
    kv: LayerKV | None


def block_keys(prompt: Sequence[int], block_tokens: int, blocks: int) -> list[tuple[int, tuple[int, ...]]]:
    """(hash-chain key, tokens) of the first `blocks` full blocks of `prompt`."""
    keys: list[tuple[int, tuple[int, ...]]] = []
    parent: int | None = None
    for index in range(blocks):
        tokens = tuple(prompt[index * block_tokens : (index + 1) * block_tokens])
        parent = hash((parent, tokens))
        keys.append((parent, tokens))
    return keys


class PrefixCache:
    """LRU cache of full prompt blocks' keys and values, keyed by hash chains."""

    def __init__(self, capacity_tokens: int, block_tokens: int = 16) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.block_tokens = block_tokens
        self.capacity_tokens = capacity_tokens
        self._blocks: OrderedDict[int, _Block] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """True when at least one block fits."""
        return self.capacity_tokens >= self.block_tokens

    @property
    def tokens(self) -> int:
        """Tokens held (cached blocks x block_tokens)."""
        return len(self._blocks) * self.block_tokens

    def reusable_blocks(self, prompt_tokens: int) -> int:
        """Full blocks of a prompt that may be reused (its last token is always computed)."""
        return max(prompt_tokens - 1, 0) // self.block_tokens

    def lookup(self, prompt: Sequence[int]) -> PrefixHit:
        """The longest cached prefix of `prompt` (whole blocks); marks its blocks recently used."""
        if not self.enabled or not self._blocks:
            return PrefixHit(0, None)
        found: list[_Block] = []
        parent: int | None = None
        for key, tokens in block_keys(prompt, self.block_tokens, self.reusable_blocks(len(prompt))):
            block = self._blocks.get(key)
            if block is None or block.tokens != tokens or block.parent != parent:
                break
            found.append(block)
            parent = key
        if not found:
            return PrefixHit(0, None)
        self.touch(prompt)
        layers = len(found[0].kv)
        kv = [
            (
                torch.cat([block.kv[layer][0] for block in found], dim=-2),
                torch.cat([block.kv[layer][1] for block in found], dim=-2),
            )
            for layer in range(layers)
        ]
        return PrefixHit(len(found) * self.block_tokens, kv)

    def missing(self, prompt: Sequence[int]) -> list[tuple[int, int, int | None, tuple[int, ...]]]:
        """(block index, key, parent key, tokens) of the prompt's full blocks not cached yet."""
        if not self.enabled:
            return []
        result: list[tuple[int, int, int | None, tuple[int, ...]]] = []
        parent: int | None = None
        for index, (key, tokens) in enumerate(
            block_keys(prompt, self.block_tokens, self.reusable_blocks(len(prompt)))
        ):
            block = self._blocks.get(key)
            if block is None or block.tokens != tokens or block.parent != parent:
                result.append((index, key, parent, tokens))
            parent = key
        return result

    def touch(self, prompt: Sequence[int]) -> None:
        """Marks the cached blocks of `prompt` recently used, its first block most recently,
        so eviction takes a prefix's last blocks before its first ones (no block is left
        unreachable behind an evicted one while its parent could go instead)."""
        keys = [key for key, _ in block_keys(prompt, self.block_tokens, self.reusable_blocks(len(prompt)))]
        for key in reversed(keys):
            if key in self._blocks:
                self._blocks.move_to_end(key)

    def insert(self, key: int, parent: int | None, tokens: tuple[int, ...], kv: LayerKV, room: int) -> bool:
        """Stores one block (its own copy of `kv`), evicting least recently used blocks to stay
        within capacity and within `room` tokens (what the KV budget leaves); False if it does not fit."""
        limit = min(self.capacity_tokens, room)
        if limit < self.block_tokens:
            return False
        self.evict(self.tokens + self.block_tokens - limit)
        self._blocks[key] = _Block(parent, tokens, [(k.clone(), v.clone()) for k, v in kv])
        return True

    def evict(self, tokens: int) -> int:
        """Drops least recently used blocks until `tokens` are freed (or none is left);
        returns the tokens freed."""
        freed = 0
        while freed < tokens and self._blocks:
            self._blocks.popitem(last=False)
            freed += self.block_tokens
        return freed

    def clear(self) -> None:
        """Drops every block."""
        self._blocks.clear()
