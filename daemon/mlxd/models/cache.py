"""Per-layer key/value caches of one sequence. Every array is [B, n_kv_heads, T, head_dim] so sequences can be
batched (models/batch_cache.py).

What the engine needs of any layer's cache, whatever it holds (keys and values here; a recurrent layer's states in
models/recurrent_cache.py), is the `LayerCache` protocol: its position, the arrays to evaluate, the row state it
hands to a batch and takes back, and snapshots for the prefix cache. Its batched counterpart is models/batch_cache.py's
to choose (`batched`), so this module imports nothing of batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import mlx.core as mx

from mlxd.models.base import AttentionCache, Mask, create_attention_mask

# One sequence's state in one layer as arrays with a batch axis of 1 (keys and values, oldest position first), or
# None when it holds nothing yet. What a batch cache takes in `add_row` and gives back in `row_state`.
RowState = tuple[mx.array, ...] | None


class LayerCache(AttentionCache, Protocol):
    offset: int            # positions seen

    @property
    def window(self) -> int | None:
        """The sliding window of the layer, None when it keeps every position."""
        ...

    @property
    def state(self) -> list[mx.array]:
        """The arrays to evaluate after a prefill chunk so the lazy graph does not keep growing."""
        ...

    def kept(self) -> RowState: ...

    def snapshot(self) -> Snapshot: ...

    def restore(self, snapshot: Snapshot, length: int) -> None: ...


class Snapshot(Protocol):
    """One layer's state copied out of its cache for the prefix cache (LayerSnapshot: keys and values;
    recurrent_cache.RecurrentSnapshot: a recurrent layer's states)."""

    @property
    def offset(self) -> int:
        """Positions the layer had seen."""
        ...

    @property
    def arrays(self) -> tuple[mx.array, ...]:
        """What to evaluate before keeping it."""
        ...

    @property
    def nbytes(self) -> int: ...

    @property
    def trimmable(self) -> bool:
        """Whether it can serve any shorter prefix of its positions."""
        ...

    def restorable(self, length: int) -> bool:
        """Whether a cache holding exactly positions 0..length-1 can be rebuilt from it."""
        ...


@dataclass(frozen=True, eq=False)
class LayerSnapshot:
    """One layer's kept positions copied out of its cache, in temporal order: [B, n_kv_heads, kept, head_dim].

    The arrays own their buffers (never a view of the cache's storage) and are never written to; a restored cache
    only reads them.
    """

    keys: mx.array
    values: mx.array
    offset: int                 # positions the layer had seen; kept = min(offset, window)
    window: int | None = None   # None for a full cache

    @property
    def arrays(self) -> tuple[mx.array, ...]:
        return self.keys, self.values

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    @property
    def trimmable(self) -> bool:
        """Whether every position 0..offset-1 is still here, so any shorter prefix can be restored."""
        return self.window is None or self.offset <= self.window

    def restorable(self, length: int) -> bool:
        """Whether a cache holding exactly positions 0..length-1 can be rebuilt from this snapshot."""
        return length == self.offset or (0 < length < self.offset and self.trimmable)


def kv_storage(keys: mx.array | None, values: mx.array | None) -> tuple[mx.array, mx.array] | None:
    """A cache's storage (keys, values), which is set and cleared as a pair; None while it holds nothing."""
    return None if keys is None or values is None else (keys, values)


def grown_storage(stored: tuple[mx.array, mx.array] | None, kept: int, keys: mx.array, values: mx.array,
                  size: int) -> tuple[mx.array, mx.array]:
    """The first `kept` positions of `stored` (keys, values), then `size` zeroed ones shaped like the new `keys`
    and `values` [B, heads, L, head_dim]; only the zeroed ones when `stored` is None."""
    batch, heads = keys.shape[:2]
    new_k = mx.zeros((batch, heads, size, keys.shape[3]), keys.dtype)
    new_v = mx.zeros((batch, heads, size, values.shape[3]), values.dtype)
    if stored is None:
        return new_k, new_v
    old_k, old_v = stored
    return (mx.concatenate([old_k[..., :kept, :], new_k], axis=2),
            mx.concatenate([old_v[..., :kept, :], new_v], axis=2))


def _check_restore(snapshot: Snapshot, length: int, window: int | None) -> LayerSnapshot:
    if not isinstance(snapshot, LayerSnapshot):
        raise ValueError(f"a {type(snapshot).__name__} cannot restore a key/value cache")
    if snapshot.window != window:
        raise ValueError(f"snapshot of a cache with window {snapshot.window} restored into one with window {window}")
    if not snapshot.restorable(length):
        raise ValueError(f"snapshot of {snapshot.offset} positions (window {snapshot.window}) cannot serve {length}")
    return snapshot


class _HeldKeys:
    """Keys and values [B, H, T, D], allocated at the first write (None before), and the positions seen."""

    keys: mx.array | None
    values: mx.array | None
    offset: int

    @property
    def state(self) -> list[mx.array]:
        """The arrays to evaluate after a prefill chunk so the lazy graph does not keep growing."""
        stored = kv_storage(self.keys, self.values)
        return [] if stored is None else list(stored)

    def _held(self) -> tuple[mx.array, mx.array] | None:
        """The storage, or None while it holds no position."""
        stored = kv_storage(self.keys, self.values)
        return None if stored is None or self.offset == 0 else stored


class KVCache(_HeldKeys):
    """Keeps every position. Storage grows in blocks of `step` positions so decode steps write in place."""

    window = None

    def __init__(self, step: int = 256):
        self.step = step
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append L new positions ([B, H, L, D]) and return all cached keys and values."""
        start, length = self.offset, keys.shape[2]
        stored = kv_storage(self.keys, self.values)
        if stored is None or start + length > stored[0].shape[2]:
            stored = self._grow(keys, values, start + length)
        stored_keys, stored_values = stored
        self.offset += length
        stored_keys[..., start : self.offset, :] = keys
        stored_values[..., start : self.offset, :] = values
        return stored_keys[..., : self.offset, :], stored_values[..., : self.offset, :]

    def _grow(self, keys: mx.array, values: mx.array, needed: int) -> tuple[mx.array, mx.array]:
        """Room for `needed` positions; returns the new storage (also kept as self.keys and self.values)."""
        size = -(-(needed - self.offset) // self.step) * self.step
        # Positions past offset (after a trim) are stale; keep only valid ones before appending the block.
        grown = grown_storage(kv_storage(self.keys, self.values), self.offset, keys, values, size)
        self.keys, self.values = grown
        return grown

    def make_mask(self, length: int, window: int | None = None) -> Mask:
        """Mask for the next `length` queries; keys start at position 0."""
        return create_attention_mask(length, self.offset, window)

    def kept(self) -> RowState:
        stored = self._held()
        if stored is None:
            return None
        keys, values = stored
        return keys[..., : self.offset, :], values[..., : self.offset, :]

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Forget the last n positions (e.g. a rejected draft or a shared prefix boundary); returns how many."""
        n = min(self.offset, n)
        self.offset -= n
        return n

    def reset(self) -> None:
        """Forget everything but keep the storage for the next sequence."""
        self.offset = 0

    def snapshot(self) -> LayerSnapshot:
        """A lazy copy of positions 0..offset-1 that shares no buffer with this cache; evaluate it before keeping."""
        stored = kv_storage(self.keys, self.values)
        if stored is None:
            raise ValueError("cannot snapshot an empty cache")
        keys, values = stored
        # mx.array copies: a slice alone would keep the whole (step-rounded, still written) buffer alive.
        return LayerSnapshot(mx.array(keys[..., : self.offset, :]), mx.array(values[..., : self.offset, :]),
                             self.offset)

    def restore(self, snapshot: Snapshot, length: int) -> None:
        """Hold exactly positions 0..length-1 of `snapshot`. The next append copies them into new storage."""
        stored = _check_restore(snapshot, length, None)
        self.keys = stored.keys[..., :length, :]
        self.values = stored.values[..., :length, :]
        self.offset = length


class RotatingKVCache(_HeldKeys):
    """Keeps only the last `window` positions, for sliding-window attention layers.

    Decode steps write into a ring buffer in place. Multi-token updates return the kept positions plus the new
    ones in temporal order (so a chunk larger than the window still sees the keys it needs), then keep the last
    `window` positions.
    """

    def __init__(self, window: int, step: int = 256):
        self.window = window
        self.step = step
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0
        self._idx = 0  # next ring slot to write; once the ring is full, it also holds the oldest position

    def _kept(self) -> int:
        return min(self.offset, self.window)

    def _temporal(self, stored: tuple[mx.array, mx.array]) -> tuple[mx.array, mx.array]:
        """The kept positions of the storage `stored` in temporal order."""
        stored_keys, stored_values = stored
        n = self._kept()
        if n < self.window or self._idx == 0:
            return stored_keys[..., :n, :], stored_values[..., :n, :]
        i = self._idx
        return (
            mx.concatenate([stored_keys[..., i:, :], stored_keys[..., :i, :]], axis=2),
            mx.concatenate([stored_values[..., i:, :], stored_values[..., :i, :]], axis=2),
        )

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        stored = kv_storage(self.keys, self.values)
        if keys.shape[2] == 1 and stored is not None:
            return self._update_in_place(stored, keys, values)
        return self._update_concat(stored, keys, values)

    def _update_concat(self, stored: tuple[mx.array, mx.array] | None, keys: mx.array,
                       values: mx.array) -> tuple[mx.array, mx.array]:
        if stored is not None and self._kept() > 0:
            old_k, old_v = self._temporal(stored)
            keys = mx.concatenate([old_k, keys], axis=2)
            values = mx.concatenate([old_v, values], axis=2)
        self.offset += keys.shape[2] - self._kept()
        keep = min(self.window, keys.shape[2])
        self.keys = keys[..., -keep:, :]
        self.values = values[..., -keep:, :]
        self._idx = keep % self.window
        return keys, values

    def _update_in_place(self, stored: tuple[mx.array, mx.array], keys: mx.array,
                         values: mx.array) -> tuple[mx.array, mx.array]:
        stored_keys, stored_values = stored
        capacity = stored_keys.shape[2]
        if self._idx >= capacity and capacity < self.window:
            grow = min(self.step, self.window - capacity)
            batch, heads = keys.shape[:2]
            stored_keys = mx.concatenate(
                [stored_keys, mx.zeros((batch, heads, grow, keys.shape[3]), keys.dtype)], axis=2
            )
            stored_values = mx.concatenate(
                [stored_values, mx.zeros((batch, heads, grow, values.shape[3]), values.dtype)], axis=2
            )
            self.keys, self.values = stored_keys, stored_values
        i = self._idx
        stored_keys[..., i : i + 1, :] = keys
        stored_values[..., i : i + 1, :] = values
        self.offset += 1
        self._idx = (i + 1) % self.window
        n = self._kept()
        # Ring order differs from temporal order, which is harmless for a single query that sees every kept key.
        return stored_keys[..., :n, :], stored_values[..., :n, :]

    def make_mask(self, length: int, window: int | None = None) -> Mask:
        """Mask for the next `length` queries against the keys update_and_fetch will return; uses self.window."""
        if length == 1:
            return None
        return create_attention_mask(length, self.offset, self.window, key_start=self.offset - self._kept())

    def kept(self) -> RowState:
        stored = self._held()
        return None if stored is None else self._temporal(stored)

    def is_trimmable(self) -> bool:
        """Positions can be forgotten only while none has been dropped from the window yet."""
        return self.offset < self.window

    def trim(self, n: int) -> int:
        if not self.is_trimmable():
            raise ValueError(f"cannot trim a rotating cache past its window ({self.offset} >= {self.window})")
        n = min(self.offset, n)
        self.offset -= n
        self._idx = self.offset
        return n

    def reset(self) -> None:
        self.keys = self.values = None
        self.offset = 0
        self._idx = 0

    def snapshot(self) -> LayerSnapshot:
        """A lazy copy of the kept positions in temporal order; evaluate it before keeping."""
        stored = kv_storage(self.keys, self.values)
        if stored is None:
            raise ValueError("cannot snapshot an empty cache")
        keys, values = self._temporal(stored)
        return LayerSnapshot(mx.array(keys), mx.array(values), self.offset, self.window)

    def restore(self, snapshot: Snapshot, length: int) -> None:
        """Hold the positions a cache that saw exactly 0..length-1 would keep: the snapshot's last ones when
        length equals its offset, else its first `length` (all present, since it never dropped one)."""
        stored = _check_restore(snapshot, length, self.window)
        kept = min(length, stored.keys.shape[2])
        self.keys = stored.keys[..., :kept, :]
        self.values = stored.values[..., :kept, :]
        self.offset = length
        self._idx = kept % self.window  # temporal order: slot 0 holds the oldest once the ring is full


def make_layer_caches(windows: list[int | None]) -> list[LayerCache]:
    """One cache per layer: a rotating one for each sliding-window layer, a full one otherwise."""
    return [KVCache() if w is None else RotatingKVCache(w) for w in windows]
