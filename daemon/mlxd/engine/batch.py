"""Continuous batching: every sequence past its prefill decodes in one batched forward pass per step.

Pipelined like a single sequence: `step()` queues step n+1 for every row before it reads the tokens of step n,
so the device never waits for Python. Rows join (a prefill just ended) and leave (finished, cancelled, at
their token limit) between steps; a row that ended while step n+1 was already queued just has that token
dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import mlx.core as mx

from mlxd.engine import decoder
from mlxd.models.batch_cache import BatchKVCache, BatchPositions
from mlxd.models.cache import RotatingKVCache

if TYPE_CHECKING:
    from mlxd.engine.sequence import Sequence


# Told of each row as it leaves the batch, with a function that gives the row's per-layer caches (None when
# some layer cannot give them); call it at once, the caches are views of storage the next step rewrites.
LeaveHook = Callable[["Sequence", Callable[[], list | None]], None]


class DecodeBatch:
    def __init__(self, model: Any, on_leave: LeaveHook | None = None) -> None:
        self._model = model
        self._on_leave = on_leave
        self._positions = BatchPositions()
        windows = [c.window if isinstance(c, RotatingKVCache) else None for c in model.make_cache()]
        self._caches = [BatchKVCache(self._positions, w) for w in windows]
        self.rows: list[Sequence] = []          # in cache row order: the rows of the step queued last
        self._joining: list[Sequence] = []
        self._pending: decoder.PendingBatch | None = None

    def join(self, seq: "Sequence") -> None:
        """Add a sequence whose prefill has ended; it decodes from the next step on."""
        self._joining.append(seq)

    def has_work(self) -> bool:
        return bool(self.rows or self._joining or self._pending)

    def sequences(self) -> list["Sequence"]:
        """Every sequence the batch holds: rows, joiners, and the rows of the step still to be read."""
        held = self.rows + self._joining + (self._pending.rows if self._pending else [])
        return list({id(s): s for s in held}.values())

    def step(self) -> None:
        """Queue the next decode step for every row that wants another token, then hand out the tokens of
        the step queued before (the one sync point)."""
        previous, self._pending = self._pending, None
        keep = [i for i, seq in enumerate(self.rows) if seq.ready_for_step()]
        joiners = [seq for seq in self._joining if seq.ready_for_step()]
        self._joining = []
        self._regroup(keep, joiners)
        if self.rows:
            inputs = self._inputs(previous, keep, joiners)
            self._pending = decoder.queue_batch_step(self._model, self._caches, self.rows, inputs)
            self._positions.advance()
            for seq in self.rows:
                seq.queued += 1
        if previous is not None:
            for seq, (token, logprob) in zip(previous.rows, previous.read()):
                seq.accept(token, logprob)

    def clear(self) -> None:
        """Forget every row and its keys (after a failed step: the caches' state is unknown)."""
        self.rows, self._joining, self._pending = [], [], None
        self._positions.set([])
        for cache in self._caches:
            cache.keep_rows([])

    def _regroup(self, keep: list[int], joiners: list["Sequence"]) -> None:
        if keep != list(range(len(self.rows))):
            if self._on_leave is not None:
                kept = set(keep)
                for row, seq in enumerate(self.rows):
                    if row not in kept:
                        self._on_leave(seq, lambda row=row: self._row_caches(row))
            for cache in self._caches:
                cache.keep_rows(keep)
        for cache in self._caches:
            cache.compact()
        positions = [self._positions.values[i] for i in keep]
        for seq in joiners:
            for cache, own in zip(self._caches, seq.take_cache()):
                cache.add_row(own)
            positions.append(seq.position)
        self._positions.set(positions)
        self.rows = [self.rows[i] for i in keep] + joiners

    def _row_caches(self, row: int) -> list | None:
        caches = [cache.row_cache(row) for cache in self._caches]
        return None if any(c is None for c in caches) else caches

    @staticmethod
    def _inputs(previous: decoder.PendingBatch | None, keep: list[int], joiners: list["Sequence"]) -> mx.array:
        parts = []
        if keep:
            tokens = previous.tokens
            parts.append(tokens if keep == list(range(tokens.shape[0])) else tokens[mx.array(keep, dtype=mx.int32)])
        if joiners:
            parts.append(mx.array([seq.last_prompt_token for seq in joiners], dtype=mx.int32))
        return parts[0] if len(parts) == 1 else mx.concatenate(parts)
