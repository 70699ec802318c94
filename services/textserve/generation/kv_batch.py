"""The running batch's KV cache: one left-padded transformers `DynamicCache` for all sequences.

Every running sequence is one row. Rows are right-aligned (left padding), so a decode
step feeds one token per row with an attention mask over the padding and per-row
position ids, exactly as `generate()` runs a left-padded batch. New sequences are
prefilled in groups of similar prompt length (each a left-padded forward keeping only
the last position's logits, so little compute goes to padding) and then joined to the
batch by padding the shorter cache on the left. Rows of finished sequences are dropped
before the next forward, and padding columns that no row needs any more are cut, so the
cache stays `rows x longest sequence`.

A sequence may also be prefilled in pieces (chunked prefill, and prefix reuse where its
first part's keys and values come from generation/prefix_cache.py): it is *staged* in a
cache of its own (`stage`), extended chunk by chunk (`extend`, each chunk attending to the
staged past), and joined to the batch when its prompt is complete (`commit`). `row_kv`
reads the keys and values of a sequence's positions, staged or joined, for the prefix cache.

The cache is transformers' `DynamicCache` with one change: its layers append a step's
keys and values into spare capacity instead of `torch.cat`-ing the whole cache every
step (`_AppendLayer`). Only the tensors inside the cache layers are touched; the
model's attention, masks (`create_causal_mask`) and position handling are its own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# A prefill group may hold this much padding, relative to its real prompt tokens.
_PREFILL_PADDING_RATIO = 1.25
# Rows a cache buffer keeps free when it grows, for sequences that join later.
_SPARE_ROWS = 8


class PaddedKVBatch:
    """Rows of running sequences over one left-padded DynamicCache."""

    def __init__(
        self,
        model: Any,
        device: str,
        pad_token_id: int = 0,
        max_rows: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.pad_token_id = pad_token_id
        self.max_rows = max_rows
        """Most rows the batch will hold (the scheduler's running sequences): a buffer that grows
        takes room for as many rows again up to this, so a wave of joins copies the cache once
        (None: _SPARE_ROWS more at most)."""
        self.max_tokens = max_tokens
        """With max_rows: the spare rows stop where a buffer would hold more positions than this
        (the KV budget), so the room kept for joins never costs more memory than the budget."""
        self.rows: list[int] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, width], 1 where a token is held
        self._lengths: torch.Tensor | None = None  # [rows], tokens held per row
        self._unpadded = False  # every row holds `width` tokens: decode needs no attention mask
        self._staged: dict[int, _Staged] = {}  # sequences prefilled in pieces, not joined yet

    # --- shape ---------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Padded length of the cache (0 when empty)."""
        return 0 if self._mask is None else int(self._mask.shape[1])

    def reset(self) -> None:
        """Drops every row (after a failed forward)."""
        self.rows = []
        self._cache = self._mask = self._lengths = None
        self._staged.clear()

    @property
    def staged(self) -> Collection[int]:
        """Sequences staged (partly prefilled), not joined yet."""
        return self._staged.keys()

    def keep(self, seq_ids: Collection[int]) -> None:
        """Drops the rows (and staged sequences) of sequences not in `seq_ids`, then the padding
        no row needs."""
        for seq_id in [s for s in self._staged if s not in seq_ids]:
            del self._staged[seq_id]
        if not self.rows:
            return
        keep_rows = [row for row, seq_id in enumerate(self.rows) if seq_id in seq_ids]
        if len(keep_rows) == len(self.rows):
            return
        if not keep_rows:
            self.reset()
            return
        assert self._cache is not None and self._mask is not None and self._lengths is not None
        order = _fill_holes(len(self.rows), keep_rows)
        layers = _layers(self._cache)
        if all(isinstance(layer, _AppendLayer) for layer, _, _ in layers):
            for layer, _, _ in layers:
                assert isinstance(layer, _AppendLayer)
                layer.move_rows(order)
        else:
            self._cache.batch_select_indices(torch.tensor(order, device=self.device))
        index = torch.tensor(order, device=self.device)
        self._mask = self._mask.index_select(0, index)
        self._lengths = self._lengths.index_select(0, index)
        self.rows = [self.rows[row] for row in order]
        unused = self.width - int(self._lengths.max().item())
        if unused > 0:
            for layer, keys, values in _layers(self._cache):
                if isinstance(layer, _AppendLayer):
                    layer.cut_left(unused)
                else:
                    layer.keys = keys[..., unused:, :]
                    layer.values = values[..., unused:, :]
            self._mask = self._mask[:, unused:]
        self._unpadded = bool(self._mask.all())

    # --- forward passes ------------------------------------------------------------------
    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feeds one token per row (in `rows` order); returns next-token logits [rows, vocab]."""
        assert self._cache is not None and self._mask is not None and self._lengths is not None
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        ones = torch.ones((len(self.rows), 1), dtype=self._mask.dtype, device=self.device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        output = self.model(
            input_ids=input_ids,
            attention_mask=None if self._unpadded else self._mask,
            position_ids=self._lengths.unsqueeze(1),
            cache=self._cache,
            use_cache=True,
        )
        self._cache = output.cache
        self._lengths = self._lengths + 1
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits

    def prefill(self, seq_ids: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefills new sequences and joins them to the batch; returns their logits [new, vocab]
        in the order given. The groups' caches join the batch together (one growth of its
        buffers at most, however many groups)."""
        rows: list[torch.Tensor | None] = [None] * len(prompts)
        joined: list[_Joining] = []
        for group in _length_groups([len(prompt) for prompt in prompts]):
            logits, joining = self._prefill_group([seq_ids[i] for i in group], [prompts[i] for i in group])
            joined.append(joining)
            for position, index in enumerate(group):
                rows[index] = logits[position]
        self._join(*_merge(joined))
        return torch.stack([row for row in rows if row is not None])

    def _prefill_group(
        self, seq_ids: Sequence[int], prompts: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, _Joining]:
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = _BatchCache()
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits, _Joining(list(seq_ids), output.cache, mask, mask.sum(dim=1))

    # --- prefill in pieces -----------------------------------------------------------------
    def stage(self, seq_id: int, past: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Starts a sequence prefilled in pieces, its first positions' keys and values given
        (per layer [1, heads, positions, head_dim]) or none."""
        cache = _BatchCache()
        length = 0
        for layer, (keys, values) in enumerate(past or ()):
            cache.update(keys, values, layer)
            length = int(keys.shape[-2])
        self._staged[seq_id] = _Staged(cache, length)

    def staged_tokens(self, seq_id: int) -> int:
        """Positions a staged sequence holds."""
        return self._staged[seq_id].length

    def extend(self, seq_id: int, tokens: Sequence[int]) -> torch.Tensor:
        """Feeds the next prompt tokens of a staged sequence; returns the logits after its last
        token [vocab]."""
        staged = self._staged[seq_id]
        count = len(tokens)
        input_ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        positions = torch.arange(staged.length, staged.length + count, device=self.device).unsqueeze(0)
        mask = torch.ones((1, staged.length + count), dtype=torch.long, device=self.device)
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=staged.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        staged.cache = output.cache
        staged.length += count
        logits: torch.Tensor = output.logits[0, -1, :]
        return logits

    def commit(self, seq_id: int) -> None:
        """Joins a staged sequence to the batch (as its last row)."""
        staged = self._staged.pop(seq_id)
        mask = torch.ones((1, staged.length), dtype=torch.long, device=self.device)
        lengths = torch.tensor([staged.length], dtype=torch.long, device=self.device)
        self._join([seq_id], staged.cache, mask, lengths)

    def row_kv(self, seq_id: int, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values (per layer, views) of positions [start, end) of a staged or joined
        sequence (positions count from its first token; a joined row is right-aligned)."""
        staged = self._staged.get(seq_id)
        if staged is not None:
            return [(k[..., start:end, :], v[..., start:end, :]) for _, k, v in _layers(staged.cache)]
        assert self._cache is not None and self._lengths is not None
        row = self.rows.index(seq_id)
        first = self.width - int(self._lengths[row].item())
        span = slice(first + start, first + end)
        rows = slice(row, row + 1)
        return [(k[rows, :, span, :], v[rows, :, span, :]) for _, k, v in _layers(self._cache)]

    def _join(
        self, seq_ids: list[int], cache: DynamicCache, mask: torch.Tensor, lengths: torch.Tensor
    ) -> None:
        if self._cache is None or self._mask is None or self._lengths is None:
            self.rows, self._cache, self._mask, self._lengths = seq_ids, cache, mask, lengths
            self._unpadded = bool(mask.all())
            for layer in cache.layers:  # the batch's layers from now on (decode updates them in place)
                if isinstance(layer, _AppendLayer):
                    layer.row_limit, layer.token_limit = self.max_rows, self.max_tokens
            return
        width = max(self.width, int(mask.shape[1]))
        for (layer, keys, values), (_, new_keys, new_values) in zip(
            _layers(self._cache), _layers(cache), strict=True
        ):
            if isinstance(layer, _AppendLayer):
                layer.join_rows(new_keys, new_values)
            else:
                layer.keys = torch.cat([_pad_left(keys, width), _pad_left(new_keys, width)], dim=0)
                layer.values = torch.cat([_pad_left(values, width), _pad_left(new_values, width)], dim=0)
        self._mask = torch.cat([_pad_left_2d(self._mask, width), _pad_left_2d(mask, width)], dim=0)
        self._lengths = torch.cat([self._lengths, lengths])
        self.rows = self.rows + seq_ids
        self._unpadded = bool(self._mask.all())


@dataclass
class _Joining:
    """Prefilled rows about to join the batch: their sequences, cache, mask and lengths."""

    seq_ids: list[int]
    cache: DynamicCache
    mask: torch.Tensor
    lengths: torch.Tensor


def _merge(parts: Sequence[_Joining]) -> tuple[list[int], DynamicCache, torch.Tensor, torch.Tensor]:
    """One set of rows from several prefill groups (each left-padded to the widest), in order."""
    if len(parts) == 1:
        part = parts[0]
        return part.seq_ids, part.cache, part.mask, part.lengths
    width = max(int(part.mask.shape[1]) for part in parts)
    cache = _BatchCache()
    layered = [_layers(part.cache) for part in parts]
    for index in range(len(layered[0])):
        keys = torch.cat([_pad_left(layers[index][1], width) for layers in layered], dim=0)
        values = torch.cat([_pad_left(layers[index][2], width) for layers in layered], dim=0)
        cache.update(keys, values, index)
    mask = torch.cat([_pad_left_2d(part.mask, width) for part in parts], dim=0)
    lengths = torch.cat([part.lengths for part in parts])
    return [seq_id for part in parts for seq_id in part.seq_ids], cache, mask, lengths


@dataclass
class _Staged:
    """A sequence being prefilled in pieces: its own unpadded cache and the positions it holds."""

    cache: DynamicCache
    length: int


def _fill_holes(rows: int, keep: Sequence[int]) -> list[int]:
    """The new row order after dropping rows: kept rows stay where they are, except the last
    ones, which move into the gaps (old row indices, in new row order)."""
    count = len(keep)
    stay = {row for row in keep if row < count}
    movers = iter(row for row in keep if row >= count)
    return [row if row in stay else next(movers) for row in range(count)]


def _length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped by similar length (shortest first): a group grows while its padded
    tokens stay within _PREFILL_PADDING_RATIO x its real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    real = 0
    for index in order:
        length = lengths[index]
        if groups and (len(groups[-1]) + 1) * length <= _PREFILL_PADDING_RATIO * (real + length):
            groups[-1].append(index)
            real += length
        else:
            groups.append([index])
            real = length
    return groups


class _AppendLayer(DynamicLayer):
    """A DynamicLayer that appends into spare capacity (amortised O(1) per token and per row).

    `keys` / `values` are views of larger buffers: the first rows, and `length` positions from
    `_start`. A step's keys and values are written into spare positions on the right, rows that
    join (`join_rows`) into spare rows, and padding no row needs any more is dropped by moving
    `_start` (`cut_left`), so none of these copies the cache; positions freed on the left are
    used again when a longer row joins. When the views are replaced from outside (rows
    selected, padding cut), the next update copies them into fresh buffers with room to grow.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._start = 0
        """First buffer position of the views."""
        self.row_limit: int | None = None
        """Most rows the buffers need (PaddedKVBatch.max_rows)."""
        self.token_limit: int | None = None
        """Most positions (rows x capacity) spare rows may bring a buffer to (PaddedKVBatch.max_tokens)."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized or self.keys is None or self.values is None or self.keys.numel() == 0:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            self._key_buffer = self._value_buffer = None
            return self.keys, self.values
        keys = self.keys
        rows, length, new = keys.shape[0], keys.shape[-2], key_states.shape[-2]
        if not self._owned():
            self._key_buffer = self._value_buffer = None
        if self._key_buffer is None or self._start + length + new > self._key_buffer.shape[-2]:
            capacity = max(2 * (length + new), 64)
            self._grow(self._row_capacity(rows, capacity), capacity, 0)
        key_buffer, value_buffer = self._key_buffer, self._value_buffer
        assert key_buffer is not None and value_buffer is not None
        start, end = self._start, self._start + length
        key_buffer[:rows, :, end : end + new, :] = key_states
        value_buffer[:rows, :, end : end + new, :] = value_states
        self.keys = key_buffer[:rows, :, start : end + new, :]
        self.values = value_buffer[:rows, :, start : end + new, :]
        return self.keys, self.values

    def join_rows(self, new_keys: torch.Tensor, new_values: torch.Tensor) -> None:
        """Appends rows (right-aligned, left-padded with zeros to the common width)."""
        assert self.keys is not None and self.values is not None
        rows, width = self.keys.shape[0], self.keys.shape[-2]
        count, new_width = new_keys.shape[0], new_keys.shape[-2]
        target = max(width, new_width)
        shift = target - width
        buffer = self._key_buffer
        if not self._owned() or buffer is None or rows + count > buffer.shape[0] or shift > self._start:
            capacity = max(2 * target, 64)
            self._grow(self._row_capacity(rows + count, capacity), capacity, shift)
        elif shift:
            # A longer row joins: the rows there get `shift` more zero positions on the left,
            # taken from the room cut_left freed.
            self._start -= shift
            for buf in (self._key_buffer, self._value_buffer):
                assert buf is not None
                buf[:rows, :, self._start : self._start + shift, :] = 0
        key_buffer, value_buffer = self._key_buffer, self._value_buffer
        assert key_buffer is not None and value_buffer is not None
        start = self._start
        pad = target - new_width
        for buf, states in ((key_buffer, new_keys), (value_buffer, new_values)):
            buf[rows : rows + count, :, start : start + pad, :] = 0
            buf[rows : rows + count, :, start + pad : start + target, :] = states
        self.keys = key_buffer[: rows + count, :, start : start + target, :]
        self.values = value_buffer[: rows + count, :, start : start + target, :]

    def move_rows(self, order: Sequence[int]) -> None:
        """Keeps the rows `order` (old indices, new order) in place: only rows whose index
        changes are copied (`_fill_holes` moves the last rows into the gaps)."""
        assert self.keys is not None and self.values is not None
        if not self._owned():
            index = torch.tensor(list(order), device=self.keys.device)
            self.keys = self.keys.index_select(0, index)
            self.values = self.values.index_select(0, index)
            return
        key_buffer, value_buffer = self._key_buffer, self._value_buffer
        assert key_buffer is not None and value_buffer is not None
        start, end = self._start, self._start + self.keys.shape[-2]
        for new, old in enumerate(order):
            if new != old:
                key_buffer[new, :, start:end, :] = key_buffer[old, :, start:end, :]
                value_buffer[new, :, start:end, :] = value_buffer[old, :, start:end, :]
        self.keys = key_buffer[: len(order), :, start:end, :]
        self.values = value_buffer[: len(order), :, start:end, :]

    def cut_left(self, columns: int) -> None:
        """Drops the first `columns` positions (padding no row needs) without copying."""
        assert self.keys is not None and self.values is not None
        if not self._owned():
            self.keys = self.keys[..., columns:, :]
            self.values = self.values[..., columns:, :]
            return
        key_buffer, value_buffer = self._key_buffer, self._value_buffer
        assert key_buffer is not None and value_buffer is not None
        rows, end = self.keys.shape[0], self._start + self.keys.shape[-2]
        self._start += columns
        self.keys = key_buffer[:rows, :, self._start : end, :]
        self.values = value_buffer[:rows, :, self._start : end, :]

    def _grow(self, row_capacity: int, capacity: int, shift: int) -> None:
        """Copies the cache into new buffers of `row_capacity` rows and `capacity` positions,
        `shift` zero positions added on the left (the views start at position 0)."""
        assert self.keys is not None and self.values is not None
        keys, values = self.keys, self.values
        rows, length = keys.shape[0], keys.shape[-2]
        buffers = []
        for states in (keys, values):
            buf = states.new_empty((max(row_capacity, rows), *states.shape[1:-2], capacity, states.shape[-1]))
            if shift:
                buf[:rows, :, :shift, :] = 0
            buf[:rows, :, shift : shift + length, :] = states
            buffers.append(buf)
        self._key_buffer, self._value_buffer = buffers
        self._start = 0
        self.keys = self._key_buffer[:rows, :, : shift + length, :]
        self.values = self._value_buffer[:rows, :, : shift + length, :]

    def _row_capacity(self, rows: int, capacity: int) -> int:
        """Rows of new buffers of `capacity` positions that hold `rows` rows: _SPARE_ROWS more at
        most; with a row limit, room for as many rows again up to it, as long as the buffer holds
        at most `token_limit` positions."""
        spare = min(rows, _SPARE_ROWS)
        if self.row_limit is not None:
            limit = self.row_limit
            if self.token_limit is not None:
                limit = min(limit, self.token_limit // capacity)
            spare = max(spare, min(rows, limit - rows))
        return rows + spare

    def _owned(self) -> bool:
        """True when `keys` / `values` are still the views into the buffers (nothing replaced them)."""
        return _leads(self.keys, self._key_buffer, self._start) and _leads(
            self.values, self._value_buffer, self._start
        )


def _leads(view: torch.Tensor | None, buffer: torch.Tensor | None, start: int = 0) -> bool:
    """True when `view` is the buffer's first rows from position `start` on."""
    return (
        view is not None
        and buffer is not None
        and view.data_ptr() == buffer.data_ptr() + start * buffer.stride(-2) * buffer.element_size()
        and view.shape[1:-2] == buffer.shape[1:-2]
        and view.shape[0] <= buffer.shape[0]
        and view.stride() == buffer.stride()
    )


class _BatchCache(DynamicCache):
    """transformers' DynamicCache whose layers are `_AppendLayer`s."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = _AppendLayer


def _layers(cache: DynamicCache) -> list[tuple[DynamicLayer, torch.Tensor, torch.Tensor]]:
    """(layer, keys, values) of each layer; only full-attention DynamicLayers can be padded and joined."""
    layers: list[tuple[DynamicLayer, torch.Tensor, torch.Tensor]] = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(
                f"cache layer {type(layer).__name__} is not supported by the generation engine "
                "(only models whose layers all use full attention with a DynamicCache)"
            )
        layers.append((layer, layer.keys, layer.values))
    return layers


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """[batch, heads, seq, dim] padded with zeros on the left of the seq axis to `width`."""
    missing = width - states.shape[-2]
    if missing <= 0:
        return states
    shape = (*states.shape[:-2], missing, states.shape[-1])
    return torch.cat([states.new_zeros(shape), states], dim=-2)


def _pad_left_2d(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing <= 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)
