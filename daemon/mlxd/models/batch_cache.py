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
import numpy as np

from mlxd.models.base import AttentionCache, Mask
from mlxd.models.batch_columns import contiguous_valid, needed, squeeze_plan, visible
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

    def rollback(self, kept: list[int]) -> None:
        """After a step that fed several tokens per row: row r keeps the first kept[r] of that step's positions
        (a verify step's rejected drafts are forgotten)."""
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

    def advance(self, counts: list[int] | None = None) -> None:
        """Move each row on by one token, or by counts[r] (a verify step's accepted tokens)."""
        self.set([v + 1 for v in self.values] if counts is None else [v + c for v, c in zip(self.values, counts)])


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
        # Which of the columns [0, end) hold a position of their row, once a rollback left holes (None: none do,
        # and row r holds exactly [starts[r], end)). Host-side: the runner reads acceptance there anyway.
        self._valid: np.ndarray | None = None
        self._written = 0               # columns the last write took (what `rollback` may give back)

    # -- what the model's attention calls ----------------------------------------------------------------------

    @property
    def offset(self) -> int | mx.array:
        return self.positions.offset()

    def make_mask(self, length: int, window: int | None = None) -> Mask:
        """Mask for one step of `length` tokens per row: row r sees its own columns within the window, and
        its new tokens see each other causally."""
        if length != 1 or self._valid is not None:
            return self._position_mask(length)
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
        return self._additive(mask[:, None, None, :])

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Write the step's columns ([B, H, L, D]) and return every column up to them."""
        length = keys.shape[2]
        stored = kv_storage(self.keys, self.values)
        if stored is None or self.end + length > stored[0].shape[2]:
            stored = self._grow(keys, values, length)
        stored_keys, stored_values = stored
        stored_keys[..., self.end : self.end + length, :] = keys
        stored_values[..., self.end : self.end + length, :] = values
        self.end += length
        self._written = length
        if self._valid is not None:
            self._valid = np.concatenate([self._valid, np.ones((len(self.starts), length), dtype=bool)], axis=1)
        return stored_keys[..., : self.end, :], stored_values[..., : self.end, :]

    def rollback(self, kept: list[int]) -> None:
        """After a step of several columns: row r keeps the first kept[r] of them; the rest are forgotten (the
        columns every row rejects are given back, the others become holes the mask hides)."""
        dropped = [self._written - k for k in kept]
        common = min(dropped, default=0)
        if common:
            self.end -= common
            if self._valid is not None:
                self._valid = self._valid[:, : self.end]
            self._set_starts([min(s, self.end) for s in self.starts])
        if any(d > common for d in dropped):
            valid = self._host_valid()
            for r, d in enumerate(dropped):
                if d > common:
                    valid[r, self.end - (d - common) : self.end] = False
            self._valid = valid
        self._written = 0

    def forget(self, counts: list[int]) -> None:
        """Row r forgets its last counts[r] positions, whichever steps wrote them (a draft model's rejected
        drafts); they become holes."""
        if any(counts):
            valid = self._host_valid()
            for r, n in enumerate(counts):
                if n:
                    valid[r, np.nonzero(valid[r])[0][-n:]] = False
            self._valid = valid

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
            # The rows before it are empty (joined with nothing seen, no step yet): zero columns, all padding.
            empty = len(self.starts)
            self.keys, self.values = (mx.concatenate([mx.zeros((empty, *a.shape[1:]), a.dtype), a]) if empty else a
                                      for a in kept)
            self.end = n
            self.starts = [n] * empty
        else:
            keys, values = kept
            old_k, old_v = stored
            width = old_k.shape[2]
            pad = [(0, 0), (0, 0), (self.end - n, width - self.end), (0, 0)]
            self.keys = mx.concatenate([old_k, mx.pad(keys, pad)], axis=0)
            self.values = mx.concatenate([old_v, mx.pad(values, pad)], axis=0)
        if self._valid is not None:
            self._valid = np.concatenate([self._valid, contiguous_valid([self.end - n], self.end)], axis=0)
        self._set_starts(self.starts + [self.end - n])

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only `rows` (indices, in their new order), then drop columns no remaining row can see."""
        if not rows:
            self.keys = self.values = None
            self.end = 0
            self._valid = None
            self._set_starts([])
            return
        stored = kv_storage(self.keys, self.values)
        if stored is not None and rows != list(range(stored[0].shape[0])):
            index = mx.array(rows, dtype=mx.int32)
            self.keys, self.values = stored[0][index], stored[1][index]
        if self._valid is not None:
            self._valid = self._valid[rows]
        self._set_starts([self.starts[r] for r in rows])
        self._drop_unseen_columns(force=True)

    def row_state(self, row: int) -> RowState:
        """The row's kept columns (a sliding-window layer may have cut the oldest: the mask hides them anyway)."""
        stored = kv_storage(self.keys, self.values)
        if stored is None or self.starts[row] == self.end:
            return None
        return self._row_columns(stored, row)

    def row_cache(self, row: int) -> KVCache | None:
        """Row `row`'s keys as a single-sequence cache (lazy slices of this one; read them before the next
        step writes), or None for a sliding-window layer, which may have dropped some of the row's positions."""
        stored = kv_storage(self.keys, self.values)
        if self.window is not None or stored is None:
            return None
        cache = KVCache()
        cache.keys, cache.values = self._row_columns(stored, row)
        cache.offset = cache.keys.shape[2]
        return cache

    def compact(self) -> None:
        """Between steps: drop the leading columns no row can see once `step` of them piled up (and the holes)."""
        self._drop_unseen_columns(force=False)

    # -- internals -----------------------------------------------------------------------------------------

    def _starts(self) -> mx.array:
        if self._starts_array is None:
            self._starts_array = mx.array(self.starts, dtype=mx.int32)
        return self._starts_array

    def _set_starts(self, starts: list[int]) -> None:
        self.starts = starts
        self._starts_array = None

    def _host_valid(self) -> np.ndarray:
        return self._valid.copy() if self._valid is not None else contiguous_valid(self.starts, self.end)

    def _additive(self, mask: mx.array) -> mx.array:
        if self.keys is None:
            return mask
        # Additive, in the keys' dtype: MLX's CUDA attention converts a boolean mask in every layer otherwise.
        return mx.where(mask, mx.array(0, self.keys.dtype), mx.array(-mx.inf, self.keys.dtype))

    def _position_mask(self, length: int) -> mx.array:
        seen = visible(self._host_valid(), length, self.window)
        return self._additive(mx.array(seen)[:, None, :, :])

    def _row_columns(self, stored: tuple[mx.array, mx.array], row: int) -> tuple[mx.array, mx.array]:
        (keys, values), start = stored, self.starts[row]
        if self._valid is None:
            return keys[row:row + 1, :, start:self.end, :], values[row:row + 1, :, start:self.end, :]
        index = mx.array(np.nonzero(self._valid[row])[0].astype(np.int32))
        return keys[row:row + 1, :, index, :], values[row:row + 1, :, index, :]

    def _grow(self, keys: mx.array, values: mx.array, length: int) -> tuple[mx.array, mx.array]:
        """At least `step` more columns; returns the new storage (also kept as self.keys and self.values)."""
        size = -(-length // self.step) * self.step
        grown = grown_storage(kv_storage(self.keys, self.values), self.end, keys, values, size)
        self.keys, self.values = grown
        return grown

    def _pad_left(self, n: int) -> None:
        stored = kv_storage(self.keys, self.values)
        if stored is not None:
            pad = [(0, 0), (0, 0), (n, 0), (0, 0)]
            self.keys, self.values = mx.pad(stored[0], pad), mx.pad(stored[1], pad)
        if self._valid is not None:
            self._valid = np.pad(self._valid, [(0, 0), (n, 0)])
        self.end += n
        self._set_starts([s + n for s in self.starts])

    def _drop_unseen_columns(self, force: bool) -> None:
        """Cut the leading columns that every row masks (padding, or keys older than the window). Without
        force only when at least `step` of them pile up, since the cut copies the whole cache."""
        stored = kv_storage(self.keys, self.values)
        if stored is None or not self.starts:
            return
        if self._valid is not None:
            self._squeeze(stored, force)
            return
        lowest = min(self.starts)
        if self.window is not None:
            lowest = max(lowest, self.end + 1 - self.window)
        if lowest <= 0 or (not force and lowest < self.step):
            return
        self.keys, self.values = stored[0][..., lowest:, :], stored[1][..., lowest:, :]
        self.end -= lowest
        self._set_starts([max(s - lowest, 0) for s in self.starts])

    def _squeeze(self, stored: tuple[mx.array, mx.array], force: bool) -> None:
        """With holes: once `step` columns could go (with force, any), gather each row's needed columns
        right-aligned without holes, back to the contiguous layout."""
        assert self._valid is not None
        keep = needed(self._valid, self.window)
        # What a squeeze would free, before its plan: the plan loops over rows, and this runs for every layer at
        # every step while holes last (on an H200, 1.4 ms of a 16-row step's host work when planned each time).
        freed = self.end - int(keep.sum(axis=1).max(initial=0))
        if freed <= 0 or (not force and freed < self.step):
            return
        index, starts = squeeze_plan(keep)
        gather = mx.array(index)[:, None, :, None]
        self.keys = mx.take_along_axis(stored[0], gather, axis=2)
        self.values = mx.take_along_axis(stored[1], gather, axis=2)
        self.end = index.shape[1]
        self._valid = None
        self._set_starts(starts)


def batched(cache: LayerCache, positions: BatchPositions) -> BatchLayerCache:
    """An empty batch cache for the kind of layer `cache` is (one sequence's cache, from the model's make_cache).

    A full or a sliding-window layer keeps keys and values, which BatchKVCache holds both; a recurrent layer keeps
    its states (models/recurrent_cache.py)."""
    if isinstance(cache, (KVCache, RotatingKVCache)):
        return BatchKVCache(positions, cache.window)
    if isinstance(cache, RecurrentCache):
        return BatchRecurrentCache(positions)
    raise TypeError(f"no batch cache for a layer cache of type {type(cache).__name__}")
