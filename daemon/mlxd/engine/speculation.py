"""Drafting for speculative decoding (the scheduler's policy; the runner verifies: engine/runner.py `step(drafts)`).

N-gram prompt lookup: a row's draft is what followed the most recent earlier occurrence of its last n tokens
(n from `max_ngram` down to 1) in its prompt and output so far, up to the chosen depth. Strong wherever the output
copies its input: code edits, answers that quote, repeated JSON keys. An index of every n-gram's latest end keeps
a lookup O(1) per step whatever the context length.

Adaptive depth, per row: `acceptance` is an EMA of the chance that a drafted token is accepted, learned from the
drafts verified and, while the row drafts nothing, from the draft it would have proposed (free to check: the next
token tells). With acceptance a, a depth k yields (1 - a^(k+1)) / (1 - a) tokens per step; a step of the batch
that feeds L tokens per row costs `cost[L]` seconds (an EMA of measured steps; unmeasured depths are assumed as
cheap as the deepest measured one below them, so a depth is tried before it is judged). The row drafts the k in
0..max that maximises tokens per second, 0 when no depth beats a plain step; so speculation costs little more
than noise where drafts are not accepted. The batch cost is shared by every row of the step, a simplification:
each row decides as if it alone set the step's length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlxd.engine.draft_model import DraftModel

_EMA = 0.1          # weight of the newest observation in every estimate
_PRIOR = 0.5        # acceptance assumed before any observation
_PROBE_EVERY = 16   # a draft model's row at depth 0 drafts one token after this many steps (to relearn acceptance)


class NgramIndex:
    """A row's tokens (prompt, then output) and, for each n, the end of each n-gram's latest occurrence."""

    def __init__(self, tokens: list[int], max_ngram: int = 3) -> None:
        self.tokens: list[int] = []
        self.max_ngram = max_ngram
        self._latest: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram + 1)]
        self._indexed = 0   # n-grams ending at or before this position are in _latest
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        self.tokens += tokens

    def draft(self, depth: int) -> list[int]:
        """Up to `depth` tokens that followed the latest earlier occurrence of the longest matching suffix."""
        tokens, end = self.tokens, len(self.tokens)
        if depth <= 0 or end < 2:
            return []
        # Index every n-gram that ends before the suffix, so a lookup never finds the suffix itself.
        for stop in range(self._indexed + 1, end):
            for n in range(1, min(self.max_ngram, stop) + 1):
                self._latest[n][tuple(tokens[stop - n:stop])] = stop
        self._indexed = max(self._indexed, end - 1)
        for n in range(min(self.max_ngram, end - 1), 0, -1):
            found = self._latest[n].get(tuple(tokens[end - n:]))
            if found is not None:
                return tokens[found:min(found + depth, end)]
        return []


@dataclass
class _RowSpeculation:
    index: NgramIndex
    cap: int                                  # the most drafts per step this row takes
    acceptance: float = _PRIOR
    probe: int | None = None                  # the first token it would have drafted in a step without drafts
    idle: int = 0                             # steps since it last drafted


@dataclass
class Speculator:
    """Per-row n-gram drafting with adaptive depth; the scheduler tells it each step's tokens and timing."""

    max_depth: int = 4
    max_ngram: int = 3
    adaptive: bool = True                                    # False: always the row's cap
    model: DraftModel | None = None                          # drafts by this model instead of n-gram lookup
    _rows: dict[int, _RowSpeculation] = field(default_factory=dict)
    _cost: dict[int, float] = field(default_factory=dict)   # seconds of a step feeding L tokens per row

    def start(self, row: int, prompt: list[int], cap: int | None) -> None:
        """Draft for this row from now on, at most `cap` tokens a step (None: max_depth; 0: never)."""
        depth = self.max_depth if cap is None else min(cap, self.max_depth)
        if depth > 0:
            self._rows[row] = _RowSpeculation(NgramIndex(prompt if self.model is None else [], self.max_ngram),
                                              depth)
            if self.model is not None:
                self.model.start(row, prompt)

    def forget(self, row: int) -> None:
        self._rows.pop(row, None)
        if self.model is not None:
            self.model.forget(row)

    def wants_drafts(self, rooms: dict[int, int]) -> bool:
        """Whether some row would draft now (rooms: the tokens each row may still generate)."""
        return any(self._depth(row, room) > 0 for row, room in rooms.items())

    def probe(self, rooms: dict[int, int]) -> dict[int, list[int]]:
        """No drafts this step; each row notes the token it would have drafted (to learn its acceptance)."""
        for row in rooms if self.model is None else ():
            spec = self._rows.get(row)
            if spec is not None:
                proposal = spec.index.draft(1)
                spec.probe = proposal[0] if proposal else None
        return {}

    def drafts(self, rooms: dict[int, int]) -> dict[int, list[int]]:
        """Each row's drafts for the next step; rows at depth 0 are left out (and probe)."""
        if self.model is not None:
            return self.model.draft({row: self._depth(row, room) for row, room in rooms.items()})
        out: dict[int, list[int]] = {}
        for row, room in rooms.items():
            spec = self._rows.get(row)
            if spec is None:
                continue
            depth = self._depth(row, room)
            proposal = spec.index.draft(max(depth, 1))
            spec.probe = proposal[0] if proposal and depth <= 0 else None
            if depth > 0 and proposal:
                out[row] = proposal[:depth]
        return out

    def _depth(self, row: int, room: int) -> int:
        spec = self._rows.get(row)
        if spec is None:
            return 0
        depth = self.depth(spec.acceptance, spec.cap)
        if depth == 0 and self.model is not None and spec.idle >= _PROBE_EVERY:
            depth = 1  # no free check of what a model would have drafted: try one token now and then
        return min(depth, room - 1)

    def depth(self, acceptance: float, cap: int) -> int:
        """The depth in 0..cap with the most expected tokens per second, given the measured step costs."""
        plain = self._cost.get(1)
        if not self.adaptive:
            return cap
        if plain is None:
            return 0  # no plain step measured yet: nothing to compare against
        best, best_rate, assumed = 0, 1.0 / plain, plain
        for k in range(1, cap + 1):
            assumed = self._cost.get(k + 1, assumed)
            tokens = float(k + 1) if acceptance >= 1.0 else (1 - acceptance ** (k + 1)) / (1 - acceptance)
            if tokens / assumed > best_rate * 1.02:  # a margin: noise alone never turns speculation on
                best, best_rate = k, tokens / assumed
        return best

    def observe(self, row: int, drafted: list[int], tokens: list[int]) -> None:
        """A step gave the row `tokens` after `drafted` drafts (none in a plain step)."""
        spec = self._rows.get(row)
        if spec is None:
            return
        if drafted:
            accepted = len(tokens) - 1
            for j in range(min(len(drafted), accepted + 1)):
                spec.acceptance += _EMA * (float(j < accepted) - spec.acceptance)
        elif spec.probe is not None and tokens:
            spec.acceptance += _EMA * (float(tokens[0] == spec.probe) - spec.acceptance)
        spec.probe = None
        spec.idle = 0 if drafted else spec.idle + 1
        if self.model is not None:
            self.model.observe(row, drafted, tokens)
        else:
            spec.index.extend(tokens)

    def timed(self, length: int, seconds: float) -> None:
        """A step feeding `length` tokens per row took `seconds`."""
        old = self._cost.get(length)
        self._cost[length] = seconds if old is None else old + _EMA * (seconds - old)
