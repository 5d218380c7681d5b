"""Key/value caches of several sequences decoding together (continuous batching).

Each layer keeps one [B, n_kv_heads, columns, head_dim] array. Every row is right-aligned: the shared write
column `end` is the same for all rows, and row r's kept keys sit in columns [starts[r], end); the columns before
starts[r] are padding that the attention mask hides. So one decode step writes one column for the whole batch,
and sequences of different lengths join and leave without moving the others' keys (except to widen on the left
when a longer one joins).

Sliding-window layers keep keys in the same layout and hide those older than the window with the mask; the
columns no row can see any more are dropped from the left every `step` columns, which bounds their memory.
"""

from __future__ import annotations

from typing import Protocol

import mlx.core as mx

from mlxd.models.base import AttentionCache, Mask
from mlxd.models.cache import KVCache, LayerCache, RotatingKVCache, RowState, grown_storage, kv_storage
from mlxd.models.recurrent_cache import BatchRecurrentCache, RecurrentCache


class BatchLayerCache(AttentionCache, Protocol):
    """One layer's cache of a batch of sequences, as the runner drives it between steps (any cache kind)."""

    @property
    def state(self) -> list[mx.array]: ...

    def add_row(self, kept: RowState) -> None:
        """Append a sequence, given the state its own cache kept (LayerCache.kept), as the last row."""
        ...

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only `rows` (indices, in their new order)."""
        ...

    def row_state(self, row: int) -> RowState:
        """Row `row`'s state, to add back later (a row paused out of the batch); lazy, read before the next step."""
        ...

    def row_cache(self, row: int) -> LayerCache | None:
        """Row `row` as a single-sequence cache holding every position it saw (for a prefix-cache snapshot), or None
        when this layer cannot give them all."""
        ...

    def compact(self) -> None:
        """Between steps: give back memory no row needs any more."""
        ...


class BatchPositions:
    """The absolute position of each row's next token, shared by every layer of one batch (rope offsets)."""

    def __init__(self) -> None:
        self.values: list[int] = []
        self._offset: int | mx.array | None = 0

    def offset(self) -> int | mx.array:
        """An int when every row is at the same position (the fast rope path), else int32 [B]. Built once per
        step, not once per layer."""
        if self._offset is None:
            uniform = len(set(self.values)) <= 1
            self._offset = (self.values[0] if self.values else 0) if uniform else mx.array(self.values, mx.int32)
        return self._offset

    def set(self, values: list[int]) -> None:
        self.values = values
        self._offset = None

    def advance(self) -> None:
        self.set([v + 1 for v in self.values])


class BatchKVCache:
    """One layer's cache for a batch; `window` is the layer's sliding window (None for full attention)."""

    def __init__(self, positions: BatchPositions, window: int | None, step: int = 256) -> None:
        self.positions = positions
        self.window = window
        self.step = step
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.end = 0                    # the next column to write, shared by every row
        self.starts: list[int] = []     # first column of each row's kept keys
        self._starts_array: mx.array | None = None

    # -- what the model's attention calls ----------------------------------------------------------------------

    @property
    def offset(self) -> int | mx.array:
        return self.positions.offset()

    def make_mask(self, length: int, window: int | None = None) -> Mask:
        """Mask for one decode step (length 1): row r sees columns [starts[r], end] within the window."""
        if length != 1:
            raise ValueError("a batch cache takes one token per row per step; prefill runs per sequence")
        window = self.window
        # The last column older than the window, or None while the window hides no column.
        outside = self.end - window if window is not None and self.end >= window else None
        lowest = min(self.starts, default=0)
        if lowest == max(self.starts, default=0) == 0 and outside is None:
            return None
        columns = mx.arange(self.end + 1)[None, :]
        mask = columns >= self._starts()[:, None]
        if outside is not None:
            mask = mask & (columns > outside)
        if self.keys is None:
            return mask[:, None, None, :]
        # Additive, in the keys' dtype: MLX's CUDA attention converts a boolean mask in every layer otherwise.
        additive = mx.where(mask, mx.array(0, self.keys.dtype), mx.array(-mx.inf, self.keys.dtype))
        return additive[:, None, None, :]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Write one new column ([B, H, 1, D]) and return every column up to it."""
        if keys.shape[2] != 1:
            raise ValueError("a batch cache takes one token per row per step")
        stored = kv_storage(self.keys, self.values)
        if stored is None or self.end >= stored[0].shape[2]:
            stored = self._grow(keys, values)
        stored_keys, stored_values = stored
        stored_keys[..., self.end : self.end + 1, :] = keys
        stored_values[..., self.end : self.end + 1, :] = values
        self.end += 1
        return stored_keys[..., : self.end, :], stored_values[..., : self.end, :]

    @property
    def state(self) -> list[mx.array]:
        stored = kv_storage(self.keys, self.values)
        return [] if stored is None else list(stored)

    # -- rows joining and leaving (the batch's bookkeeping, between steps) -----------------------------------

    def add_row(self, kept: RowState) -> None:
        """Append a sequence as the last row, given its keys and values ([1, H, n, D], oldest first) or None."""
        n = 0 if kept is None else kept[0].shape[2]
        if n > self.end:
            self._pad_left(n - self.end)
        stored = kv_storage(self.keys, self.values)
        if kept is None:
            if stored is not None:  # an empty row: all padding
                old_k, old_v = stored
                self.keys = mx.concatenate([old_k, mx.zeros_like(old_k[:1])], axis=0)
                self.values = mx.concatenate([old_v, mx.zeros_like(old_v[:1])], axis=0)
        elif stored is None:
            self.keys, self.values = kept
            self.end = n
        else:
            keys, values = kept
            old_k, old_v = stored
            width = old_k.shape[2]
            pad = [(0, 0), (0, 0), (self.end - n, width - self.end), (0, 0)]
            self.keys = mx.concatenate([old_k, mx.pad(keys, pad)], axis=0)
            self.values = mx.concatenate([old_v, mx.pad(values, pad)], axis=0)
        self._set_starts(self.starts + [self.end - n])

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only `rows` (indices, in their new order), then drop columns no remaining row can see."""
        if not rows:
            self.keys = self.values = None
            self.end = 0
            self._set_starts([])
            return
        stored = kv_storage(self.keys, self.values)
        if stored is not None and rows != list(range(stored[0].shape[0])):
            index = mx.array(rows, dtype=mx.int32)
            self.keys, self.values = stored[0][index], stored[1][index]
        self._set_starts([self.starts[r] for r in rows])
        self._drop_unseen_columns(force=True)

    def row_state(self, row: int) -> RowState:
        """The row's kept columns (a sliding-window layer may have cut the oldest: the mask hides them anyway)."""
        stored = kv_storage(self.keys, self.values)
        if stored is None or self.starts[row] == self.end:
            return None
        (keys, values), start = stored, self.starts[row]
        return keys[row:row + 1, :, start:self.end, :], values[row:row + 1, :, start:self.end, :]

    def row_cache(self, row: int) -> KVCache | None:
        """Row `row`'s keys as a single-sequence cache (lazy slices of this one; read them before the next
        step writes), or None for a sliding-window layer, which may have dropped some of the row's positions."""
        stored = kv_storage(self.keys, self.values)
        if self.window is not None or stored is None:
            return None
        cache = KVCache()
        (keys, values), start = stored, self.starts[row]
        cache.keys = keys[row:row + 1, :, start:self.end, :]
        cache.values = values[row:row + 1, :, start:self.end, :]
        cache.offset = self.end - start
        return cache

    def compact(self) -> None:
        """Between steps: drop the leading columns no row can see once `step` of them piled up."""
        self._drop_unseen_columns(force=False)

    # -- internals -----------------------------------------------------------------------------------------

    def _starts(self) -> mx.array:
        if self._starts_array is None:
            self._starts_array = mx.array(self.starts, dtype=mx.int32)
        return self._starts_array

    def _set_starts(self, starts: list[int]) -> None:
        self.starts = starts
        self._starts_array = None

    def _grow(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """`step` more columns; returns the new storage (also kept as self.keys and self.values)."""
        grown = grown_storage(kv_storage(self.keys, self.values), self.end, keys, values, self.step)
        self.keys, self.values = grown
        return grown

    def _pad_left(self, n: int) -> None:
        stored = kv_storage(self.keys, self.values)
        if stored is not None:
            pad = [(0, 0), (0, 0), (n, 0), (0, 0)]
            self.keys, self.values = mx.pad(stored[0], pad), mx.pad(stored[1], pad)
        self.end += n
        self._set_starts([s + n for s in self.starts])

    def _drop_unseen_columns(self, force: bool) -> None:
        """Cut the leading columns that every row masks (padding, or keys older than the window). Without
        force only when at least `step` of them pile up, since the cut copies the whole cache."""
        stored = kv_storage(self.keys, self.values)
        if stored is None or not self.starts:
            return
        lowest = min(self.starts)
        if self.window is not None:
            lowest = max(lowest, self.end + 1 - self.window)
        if lowest <= 0 or (not force and lowest < self.step):
            return
        self.keys, self.values = stored[0][..., lowest:, :], stored[1][..., lowest:, :]
        self.end -= lowest
        self._set_starts([max(s - lowest, 0) for s in self.starts])



def batched(cache: LayerCache, positions: BatchPositions) -> BatchLayerCache:
    """An empty batch cache for the kind of layer `cache` is (one sequence's cache, from the model's make_cache).

    A full or a sliding-window layer keeps keys and values, which BatchKVCache holds both; a recurrent layer keeps
    its states (models/recurrent_cache.py)."""
    if isinstance(cache, (KVCache, RotatingKVCache)):
        return BatchKVCache(positions, cache.window)
    if isinstance(cache, RecurrentCache):
        return BatchRecurrentCache(positions)
    raise TypeError(f"no batch cache for a layer cache of type {type(cache).__name__}")
