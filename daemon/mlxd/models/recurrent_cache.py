"""Caches of recurrent layers (Qwen3.5's Gated DeltaNet; Mamba-2 has the same shape of state): a fixed-size state
per sequence instead of keys and values per position.

A recurrent layer keeps two arrays per sequence, whatever its kind:
- the conv state: the last K-1 inputs of its causal depthwise convolution, [B, K-1, conv_dim], oldest first;
- the recurrent state, float32: [B, Hv, Dv, Dk] for a Gated DeltaNet layer (value dims before key dims, as mlx-lm
  and Ollama hold it; transformers' and expected_state.safetensors' [Hv, Dk, Dv] is its transpose), and
  [B, H, P, N] for a Mamba-2 layer. The cache never looks inside either array.

The layer reads both (None before the first token: the layer starts from zeros) and hands back the new ones with
the number of tokens they took in (`advance`). The arrays are replaced, never written in place, so a row's
slices taken for a snapshot or a parked row stay valid.

Neither state can be rewound: a snapshot serves only a prompt of exactly its length (`RecurrentSnapshot`). Prefill
runs one sequence at a time and a decode step feeds every row exactly one real token; a row joining with nothing
seen (a one-token prompt) starts from zeros.

A verify step (speculative decoding) feeds each row its last token and its drafts, L = 1 + the most drafts per
row, a row with fewer padded at the end. There the layer asks `stepwise(L)`, runs its few tokens one by one
(exact, as the decode steps they stand for) and hands the batch cache the conv window and the recurrent state
after each position (`advance_steps`); `rollback(kept)` then sets each row to its states after its kept positions,
which never reach its padding (a row keeps at most its last token and its drafts), and drops the rest. Only a
verify step holds L states per row, and only until its rollback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import mlx.core as mx

from mlxd.models.base import Mask
from mlxd.models.cache import LayerCache, RowState, Snapshot

if TYPE_CHECKING:  # batch_cache chooses this module's batch class, so it imports this module
    from mlxd.models.batch_cache import BatchPositions


class RecurrentState(Protocol):
    """What a recurrent layer uses of its cache: one sequence's (RecurrentCache) or the decode batch's."""

    @property
    def conv_state(self) -> mx.array | None: ...

    @property
    def recurrent_state(self) -> mx.array | None: ...

    def advance(self, conv_state: mx.array, recurrent_state: mx.array, tokens: int) -> None:
        """Take the states after `tokens` more tokens of each row."""
        ...

    def stepwise(self, tokens: int) -> bool:
        """Whether a step of `tokens` per row must hand over the states after each of them (`advance_steps`)."""
        ...

    def advance_steps(self, conv_window: mx.array, recurrent_states: Sequence[mx.array]) -> None:
        """Take a verify step's conv window [B, K-1+L, C] (the conv state it started from, then its L inputs) and
        the recurrent state after each of its L positions; `rollback` chooses each row's."""
        ...


@dataclass(frozen=True, eq=False)
class RecurrentSnapshot:
    """One recurrent layer's states after exactly `offset` tokens. Never trimmable: the state of a shorter prefix
    is not in it, so it restores only at its own length."""

    conv_state: mx.array
    recurrent_state: mx.array
    offset: int

    @property
    def arrays(self) -> tuple[mx.array, ...]:
        return self.conv_state, self.recurrent_state

    @property
    def nbytes(self) -> int:
        return self.conv_state.nbytes + self.recurrent_state.nbytes

    @property
    def trimmable(self) -> bool:
        return False

    def restorable(self, length: int) -> bool:
        return length == self.offset


class _Unkeyed:
    """A recurrent cache in the place of an attention cache: it has neither keys nor a mask."""

    window = None

    def make_mask(self, length: int, window: int | None = None) -> Mask:
        return None

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        raise TypeError("a recurrent layer's cache holds no keys and values")


class RecurrentCache(_Unkeyed):
    """One sequence's states in one recurrent layer (batch axis of 1 in the engine)."""

    def __init__(self) -> None:
        self.conv_state: mx.array | None = None
        self.recurrent_state: mx.array | None = None
        self.offset = 0

    def advance(self, conv_state: mx.array, recurrent_state: mx.array, tokens: int) -> None:
        self.conv_state, self.recurrent_state = conv_state, recurrent_state
        self.offset += tokens

    def stepwise(self, tokens: int) -> bool:
        return False  # one sequence's steps are a prefill's or a decode step's, never a verify step's

    def advance_steps(self, conv_window: mx.array, recurrent_states: Sequence[mx.array]) -> None:
        raise TypeError("a single sequence's cache takes no verify steps")

    @property
    def state(self) -> list[mx.array]:
        return [a for a in (self.conv_state, self.recurrent_state) if a is not None]

    def kept(self) -> RowState:
        if self.conv_state is None or self.recurrent_state is None or self.offset == 0:
            return None
        return self.conv_state, self.recurrent_state

    def is_trimmable(self) -> bool:
        return False

    def snapshot(self) -> RecurrentSnapshot:
        """Copies of the states (a prefill's conv state is a slice of its whole input); evaluate before keeping."""
        if self.conv_state is None or self.recurrent_state is None:
            raise ValueError("cannot snapshot an empty cache")
        return RecurrentSnapshot(mx.array(self.conv_state), mx.array(self.recurrent_state), self.offset)

    def restore(self, snapshot: Snapshot, length: int) -> None:
        if not isinstance(snapshot, RecurrentSnapshot):
            raise ValueError(f"a {type(snapshot).__name__} cannot restore a recurrent layer's cache")
        if not snapshot.restorable(length):
            raise ValueError(f"a recurrent state after {snapshot.offset} tokens cannot serve {length}")
        self.conv_state, self.recurrent_state = snapshot.conv_state, snapshot.recurrent_state
        self.offset = length


class BatchRecurrentCache(_Unkeyed):
    """One recurrent layer's states for the decode batch: each row's conv and recurrent state stacked on the batch
    axis, in row order. Rows that joined with nothing seen hold zeros."""

    def __init__(self, positions: BatchPositions) -> None:
        self.positions = positions
        self.conv_state: mx.array | None = None
        self.recurrent_state: mx.array | None = None
        self._rows = 0  # rows held, also while every one of them is still empty (no arrays yet)
        # A verify step's conv window and states after each position, until its rollback.
        self._steps: tuple[mx.array, Sequence[mx.array]] | None = None

    @property
    def offset(self) -> int | mx.array:
        return self.positions.offset()

    def advance(self, conv_state: mx.array, recurrent_state: mx.array, tokens: int) -> None:
        self.conv_state, self.recurrent_state = conv_state, recurrent_state

    def stepwise(self, tokens: int) -> bool:
        # The batch takes several tokens per row only in a verify step, whose rejected ones rollback forgets.
        return tokens > 1

    def advance_steps(self, conv_window: mx.array, recurrent_states: Sequence[mx.array]) -> None:
        self._steps = conv_window, recurrent_states

    @property
    def state(self) -> list[mx.array]:
        return [a for a in (self.conv_state, self.recurrent_state) if a is not None]

    def add_row(self, kept: RowState) -> None:
        held = self._held()
        if kept is None:
            if held is not None:
                self.conv_state, self.recurrent_state = (mx.concatenate([a, mx.zeros_like(a[:1])]) for a in held)
        elif held is None:
            # The rows before it are empty: zeros of its shape.
            self.conv_state, self.recurrent_state = (
                mx.concatenate([mx.zeros((self._rows, *a.shape[1:]), a.dtype), a]) for a in kept)
        else:
            self.conv_state, self.recurrent_state = (mx.concatenate([a, b]) for a, b in zip(held, kept))
        self._rows += 1

    def keep_rows(self, rows: list[int]) -> None:
        held = self._held()
        self._rows = len(rows)
        self._steps = None  # a verify step cut short (reset_batch after a failure): its states fit no rows now
        if not rows:
            self.conv_state = self.recurrent_state = None
        elif held is not None and rows != list(range(held[0].shape[0])):
            index = mx.array(rows, dtype=mx.int32)
            self.conv_state, self.recurrent_state = held[0][index], held[1][index]

    def row_state(self, row: int) -> RowState:
        held = self._held()
        return None if held is None else (held[0][row:row + 1], held[1][row:row + 1])

    def row_cache(self, row: int) -> LayerCache | None:
        """Row `row`'s states as a single-sequence cache, at the position the batch says the row is at."""
        held = self._held()
        if held is None:
            return None
        cache = RecurrentCache()
        cache.advance(held[0][row:row + 1], held[1][row:row + 1], self.positions.values[row])
        return cache

    def compact(self) -> None:
        """Nothing to give back: a row's state does not grow."""

    def rollback(self, kept: list[int]) -> None:
        """After a verify step: row r takes its states after the first kept[r] of the step's positions; the states
        of the others are dropped."""
        if self._steps is None:
            raise ValueError("rollback without a verify step: the states of its positions are gone")
        (window, states), self._steps = self._steps, None
        length = len(states)
        if len(kept) != window.shape[0] or not all(1 <= k <= length for k in kept):
            raise ValueError(f"cannot keep {kept} of {length} positions in {window.shape[0]} rows")
        # The conv state after position j is the K-1 inputs ending there: window[:, j+1 : j+K].
        taps = window.shape[1] - length
        columns = mx.array(kept, dtype=mx.int32)[:, None] + mx.arange(taps, dtype=mx.int32)[None, :]
        self.conv_state = mx.take_along_axis(window, columns[:, :, None], axis=1)
        # Each row's recurrent state, chosen by mx.where among the positions kept (none when every row kept as many).
        counts = sorted(set(kept))
        state = states[counts[0] - 1]
        for count in counts[1:]:
            rows = mx.array([k == count for k in kept]).reshape(-1, *[1] * (state.ndim - 1))
            state = mx.where(rows, states[count - 1], state)
        self.recurrent_state = state

    def _held(self) -> tuple[mx.array, mx.array] | None:
        if self.conv_state is None or self.recurrent_state is None:
            return None
        return self.conv_state, self.recurrent_state
