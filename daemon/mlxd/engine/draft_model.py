"""Drafting by a second, smaller model that shares the target's vocabulary (`mlxd serve --draft-model PATH`).

The draft model keeps its own batch caches for the rows that draft (models/batch_cache.py), in the order it
took them in. Each drafting step feeds every row the tokens it generated since (`pending`: the verified run, or
the plain steps' tokens), then runs greedily for the deepest row's depth, all rows at once; rows that draft less
(or not at all) write columns they roll back. The whole draft is one lazy graph read once. After the target
verified, each row forgets the drafts it fed that were rejected (`forget`: holes in its own columns), and the
accepted tokens it did not feed yet become its pending input.
"""

from __future__ import annotations

from typing import cast

import mlx.core as mx

from mlxd.models.batch_cache import BatchKVCache, BatchPositions, batched
from mlxd.models.protocol import LanguageModel


class DraftModel:
    def __init__(self, model: LanguageModel) -> None:
        self._model = model
        self._positions = BatchPositions()
        self._caches = [batched(c, self._positions) for c in model.make_cache()]
        if not all(isinstance(c, BatchKVCache) for c in self._caches):
            raise ValueError("a draft model with recurrent layers cannot roll its drafts back")
        self._order: list[int] = []
        self._pending: dict[int, list[int]] = {}  # tokens the row generated that the draft model has not taken in
        self._fed: dict[int, int] = {}            # drafts of the last step the row's columns hold (unverified)

    def start(self, row: int, prompt: list[int]) -> None:
        """Take a row in: its prompt prefilled (all but the last token, which is its first pending one)."""
        cache = self._model.make_cache()
        if len(prompt) > 1:
            self._model(mx.array([prompt[:-1]], dtype=mx.int32), cache=cache)
            mx.eval([a for c in cache for a in c.state])
        for batch, own in zip(self._caches, cache):
            cast(BatchKVCache, batch).add_row(own.kept())
        self._positions.set(self._positions.values + [len(prompt) - 1])
        self._order.append(row)
        self._pending[row] = [prompt[-1]]

    def forget(self, row: int) -> None:
        if row not in self._pending:
            return
        index = self._order.index(row)
        keep = [i for i in range(len(self._order)) if i != index]
        for cache in self._caches:
            cache.keep_rows(keep)
        self._positions.set([self._positions.values[i] for i in keep])
        self._order.pop(index)
        self._pending.pop(row)
        self._fed.pop(row, None)

    def observe(self, row: int, drafted: list[int], tokens: list[int]) -> None:
        """The target gave the row `tokens` after `drafted` drafts (none in a plain step)."""
        if row not in self._pending:
            return
        fed = self._fed.pop(row, 0)
        kept = min(len(tokens) - 1, fed) if drafted else 0
        if fed > kept:  # the rejected drafts it fed: forgotten, as if never seen
            index = self._order.index(row)
            counts = [fed - kept if i == index else 0 for i in range(len(self._order))]
            for cache in self._caches:
                cast(BatchKVCache, cache).forget(counts)
            values = list(self._positions.values)
            values[index] -= fed - kept
            self._positions.set(values)
        self._pending[row] = self._pending[row] + tokens[kept:]

    def draft(self, depths: dict[int, int]) -> dict[int, list[int]]:
        """Each row's greedy drafts, depths[row] of them (rows left out or at 0 draft none)."""
        want = [depths.get(row, 0) if self._pending[row] else 0 for row in self._order]
        if not any(want):
            return {}
        for cache in self._caches:
            cache.compact()
        # Catch up: every row takes its pending tokens (left-aligned, filler after), one pass.
        pending = [self._pending[row] for row in self._order]
        length = max(len(p) for p in pending)
        inputs = mx.array([p + [0] * (length - len(p)) for p in pending], dtype=mx.int32)
        logits = self._model(inputs, cache=self._caches)
        taken = [len(p) for p in pending]
        self._advance(taken)
        last = mx.array([max(n - 1, 0) for n in taken], dtype=mx.int32)
        token = mx.argmax(logits[mx.arange(len(taken)), last], axis=-1).astype(mx.int32)
        drafted = [token]
        for j in range(1, max(want)):  # then one token a pass; rows done drafting write a column they drop
            active = [w > j for w in want]
            fed = mx.where(mx.array(active), token, mx.zeros_like(token))
            token = mx.argmax(self._model(fed[:, None], cache=self._caches)[:, -1], axis=-1).astype(mx.int32)
            self._advance([int(a) for a in active])
            drafted.append(token)
        columns = cast(list[list[int]], mx.stack(drafted, axis=1).tolist())
        out = {}
        for row, w, tokens in zip(self._order, want, columns):
            self._pending[row] = []  # every row took its pending tokens in
            if w:
                out[row] = tokens[:w]
                self._fed[row] = w - 1  # its last draft was never fed
        return out

    def _advance(self, kept: list[int]) -> None:
        for cache in self._caches:
            cache.rollback(kept)
        self._positions.advance(kept)
