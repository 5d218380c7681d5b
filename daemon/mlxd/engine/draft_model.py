"""Drafting by a second, smaller model that shares the target's vocabulary (`mlxd serve --draft-model PATH`).

The draft model keeps its own batch caches for the rows that draft (models/batch_cache.py), in the order they
joined. Rows join (empty, the whole prompt pending) and leave at the batch's next drafting step: the draft model
spends nothing on a row until the batch drafts (a draft model whose drafts are rejected costs little more than
its memory). Each drafting
step feeds every row the tokens it has not taken in (`pending`: its prompt at first, then the verified run, or
the plain steps' tokens; in passes of at most 512 per row), then runs greedily for the deepest row's depth, all
rows at once; rows that draft less
(or not at all) write columns they roll back. The whole draft is one lazy graph read once, after a catch-up of
more than a few tokens a row, which runs and is timed on its own (`caught_up`, for the policy). After the target
verified, each row forgets the drafts it fed that were rejected (`forget`: holes in its own columns), and the
accepted tokens it did not feed yet become its pending input.
"""

from __future__ import annotations

import time
from typing import cast

import mlx.core as mx

from mlxd.models.batch_cache import BatchKVCache, BatchPositions, batched
from mlxd.models.protocol import LanguageModel

_CATCH_UP = 512  # the most pending tokens a row feeds in one pass (a long prompt is taken in several)
_STEADY = 8      # the most pending tokens a row has while its batch speculates (a verify step leaves 1 or 2)


class DraftModel:
    def __init__(self, model: LanguageModel) -> None:
        self._model = model
        self._reset()
        if not all(isinstance(c, BatchKVCache) for c in self._caches):
            raise ValueError("a draft model with recurrent layers cannot roll its drafts back")
        self._pending: dict[int, list[int]] = {}  # tokens the row generated that the draft model has not taken in
        self._fed: dict[int, int] = {}            # drafts of the last step the row's columns hold (unverified)
        self.caught_up = 0.0  # seconds the last draft() spent taking in more than _STEADY tokens a row (see there)

    def start(self, row: int, prompt: list[int]) -> None:
        """Take a row in: its prompt is pending, and it joins the caches at the batch's next drafting step."""
        self._pending[row] = list(prompt)

    def forget(self, row: int) -> None:
        """Let the row go: it leaves the caches at the next drafting step, or at once if no row stays in them."""
        if self._pending.pop(row, None) is None:
            return
        self._fed.pop(row, None)
        if self._order and not any(r in self._pending for r in self._order):  # only rows that left: emptied now
            self._reset()

    def _reset(self) -> None:
        self._positions = BatchPositions()
        self._caches = [batched(c, self._positions) for c in self._model.make_cache()]
        self._order: list[int] = []  # the rows in the caches, in their order

    def _join_and_leave(self) -> None:
        """Bring the caches to the rows drafting now: those that left go in one pass, those that joined come in
        empty. Done here, not as requests start and end: a draft model whose drafts are rejected drafts seldom
        (probes), and each row's start and end cost every cache array a copy (a 16-row batch's turnover: 64
        graph nodes a request on the draft model's 32 arrays) that only the next drafting step needs."""
        keep = [i for i, row in enumerate(self._order) if row in self._pending]  # (a row id is never reused)
        if len(keep) < len(self._order):
            for cache in self._caches:
                cache.keep_rows(keep)
            self._positions.set([self._positions.values[i] for i in keep])
            self._order = [self._order[i] for i in keep]
        joined = set(self._order)
        for row in self._pending:
            if row not in joined:
                for cache in self._caches:
                    cast(BatchKVCache, cache).add_row(None)
                self._positions.set(self._positions.values + [0])
                self._order.append(row)

    def observe(self, row: int, drafted: list[int], tokens: list[int]) -> None:
        """The target gave the row `tokens` after `drafted` drafts (none in a plain step)."""
        if row not in self._pending:
            return
        fed = self._fed.pop(row, 0)  # a row that drafted joined the caches: the index below is found
        kept = min(len(tokens) - 1, fed) if drafted else 0
        if fed > kept:  # the rejected drafts it fed: forgotten, as if never seen
            index = self._order.index(row)
            counts = [fed - kept if i == index else 0 for i in range(len(self._order))]
            for cache in self._caches:
                cast(BatchKVCache, cache).forget(counts)
            values = list(self._positions.values)
            values[index] -= fed - kept
            self._positions.set(values)
        self._pending[row].extend(tokens[kept:])  # in place: a long prompt pending is not copied every step

    def draft(self, depths: dict[int, int]) -> dict[int, list[int]]:
        """Each row's greedy drafts, depths[row] of them (rows left out or at 0 draft none)."""
        self.caught_up = 0.0  # this call's alone, whatever it returns
        if not any(depths.get(row, 0) and pending for row, pending in self._pending.items()):
            return {}
        self._join_and_leave()
        want = [depths.get(row, 0) if self._pending[row] else 0 for row in self._order]
        for cache in self._caches:
            cache.compact()
        # Catch up: every row takes its pending tokens (left-aligned, filler after). While the batch speculates a
        # row has a token or two pending, taken in by the drafting pass. More (a row's first drafting step, or
        # one after plain steps: a probe, a try) go in passes of their own of at most _CATCH_UP each, all but each
        # row's last token, timed apart (`caught_up`): the policy judges a verify step by what it costs while the
        # batch speculates (engine/speculation.py), and a try that took in the whole prompt, or 32 plain steps'
        # tokens, had looked several times dearer (a good draft model then never drafted again).
        pending = [self._pending[row] for row in self._order]
        if max(len(p) for p in pending) > _STEADY:
            started = time.perf_counter()
            early = [p[:-1] for p in pending]
            while any(early):
                self._feed([e[:_CATCH_UP] for e in early])
                early = [e[_CATCH_UP:] for e in early]
            pending = [p[-1:] for p in pending]
            self.caught_up = time.perf_counter() - started
        logits = self._model(_padded(pending), cache=self._caches)
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

    def _feed(self, runs: list[list[int]]) -> None:
        """Each row takes in its run of tokens (left-aligned, filler after); the logits are not needed."""
        self._model(_padded(runs), cache=self._caches)
        self._advance([len(r) for r in runs])
        mx.eval([a for c in self._caches for a in c.state])

    def _advance(self, kept: list[int]) -> None:
        for cache in self._caches:
            cache.rollback(kept)
        self._positions.advance(kept)


def _padded(runs: list[list[int]]) -> mx.array:
    """The rows' runs left-aligned, filler after, in a catch-up pass as wide as the longest run's _bucket."""
    length = _bucket(max(len(r) for r in runs))
    return mx.array([r + [0] * (length - len(r)) for r in runs], dtype=mx.int32)


def _bucket(length: int) -> int:
    """A catch-up pass's width: a power of two. Its length varies from step to step, and on a GPU each new shape
    of the draft model's pass compiled kernels the first time (the filler columns are rolled back like any)."""
    return 1 << (length - 1).bit_length()
