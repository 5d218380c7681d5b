"""Drafting for speculative decoding (the scheduler's policy; the runner verifies: engine/runner.py `step(drafts)`).

N-gram prompt lookup: a row's draft is what followed the most recent earlier occurrence of its last n tokens
(n from `max_ngram` down to 1) in its prompt and output so far, up to the chosen depth. Strong wherever the output
copies its input: code edits, answers that quote, repeated JSON keys. An index of every n-gram's latest end keeps
a lookup O(1) per step whatever the context length.

Adaptive depth, for the batch: one verify step feeds every row the same L = 1 + the deepest draft tokens (rows with
fewer are padded), so L is chosen for the batch, not per row. Each row's `acceptance` is an EMA of the chance that a
drafted token is accepted, learned from the drafts verified and, while the row drafts nothing, from the draft it
would have proposed (free to check for n-gram lookup: the next token tells); a new row starts from the acceptance
all rows have shown so far. With acceptance a, k drafts yield (1 - a^(k+1)) / (1 - a) tokens.

NEW_ROW_CAP (0.5): a new n-gram row starts no higher than it. A request may be text of another kind than those
before it: an H100 serving rewrites and free text in turn drafted 5, 5, 20, then 43 tokens in free text's rounds (2
accepted; that last round 0.66x plain) as the rewrites taught the prior, and the new rows drafted the widest width
at their first lookups; in-process on an H100 (`speculation_inprocess --served`, after the copy tasks) free text ran
0.95x plain at one stream and gained no token. With the EMA alone the cap cost the JSON record over gRPC on the
2-core CPU (31-37 drafted tokens accepted of its 96 against 39-42) and was off; with PRIOR_WEIGHT (below) the record
accepted the same with it and without (38-42 against 34-43, 6 rounds each), free text drafted about 40 % less (6-66
tokens a request against 40-96), and replayed (`speculation_replay --served 4 --cut 96`, six cost profiles) free
text rose from 0.985-0.990 to 1.000 of plain at an H100's costs, 0.987 to 0.993 at an H200's, the rewrite was
unchanged and the JSON record within -1.2 % to +2.6 %. A draft model's rows keep the whole prior: they learn only
from drafts verified, and a model drafting for itself, accepted throughout, would wait for probes at each new
request.

PRIOR_WEIGHT (4): the prior counts as that many observations of the row's own, and a row's n-th observation weighs 1
/ (PRIOR_WEIGHT + n) until that falls to _EMA (a Beta average for its first observations, an EMA after). A new row
starts where the rows before it ended, but its own first few drafts decide whichever way the prior was wrong: free
text starting at 0.6 (as it did after rewrites before NEW_ROW_CAP) falls to 0.34 after three rejected drafts, where
the EMA alone leaves 0.44; a JSON record after free text rises as fast once its keys copy. `speculation_replay
--served 4` (the tasks' answers as timed, --cut 96) at five cost profiles from the CPU's to an H100's: the rewrite
1.980-2.851x plain against 1.927-2.731x, the JSON record and free text as high or up to 0.02 higher (weights 2 and 3
helped GPU profiles more but cost the rewrite 4 % at the CPU's; 6 and 8 stayed within 1.5 % of the EMA). In-process
on the 2-core CPU (--served, 4 rounds) the steps were alike (rewrite 39 / 38, JSON 62.5 / 64, free text 97 / 97). A
draft model's rows learn as before: they observe only drafts verified and probes 16-256 steps apart, so a first
rejected probe weighed at 1/5 turned speculation off for a while (`bench draft_policy`, one stream at acceptance
0.5: 38 drafting steps of 460 against 131 of 396, 0.999x plain against 1.006x; at 0.9 1.391x against 1.424x).

The costs of plain and verify steps are measured (engine/step_costs.py). Widths are explored upwards, one above
the widest whose cost is known (measured, or measured once and kept as a hint), so drafts that are rejected cost
one drafted token to find out, not the full depth. The step
takes the L that maximises the batch's expected tokens per second, 1 (no drafts) unless some L beats a plain step
by a margin: so speculation costs little more than noise where drafts are not accepted, and one eager row cannot
make fifteen others pay for a wide step (a 16-row step on a CPU costs nearly L times a plain one; on a GPU, whose
step is bound by host work, little more). An n-gram row judges its drafts before its newest token is read (reading
it drains the pipeline), so they count only as often as they turn out to hold (`_width`).

A draft model's rows cannot check a draft for free, so while they draft nothing the batch drafts one token now
and then to relearn (a probe): after 16 plain steps of the batch, then after twice as many each time a probe does
not turn speculation on, up to 256. A step that drafts after plain steps because a width's cost is not measured
(or was forgotten for its retry: engine/step_costs.py) counts as a probe too; only speculation that holds for a
second step brings the wait back to 16 (reset by every such try, a 16-row batch drafted for nothing every 17
steps). The steps are the batch's, whichever rows it holds: counted per row, a batch of requests shorter than the
wait never probed again, and its acceptance stayed what its first probes saw. Only steps holding a row that may
draft count: requests with speculation off (a benchmark's plain rounds) had the wait over by the time the next
speculating requests came, which then probed at their first step, catching the draft model up on every prompt. A
probe is not timed: the draft model's catch-up on every token since the last probe is exploration, not what a
verify step costs while the batch speculates.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from mlxd.engine.draft_model import DraftModel
from mlxd.engine.step_costs import StepCosts

_EMA = 0.1           # weight of the newest observation in a row's acceptance
_PRIOR_EMA = 0.02    # weight of one row's observation in the acceptance a new row starts from
_PRIOR = 0.5         # acceptance assumed before any observation
_PROBE_FIRST = 16    # plain steps before a draft model's batch drafts one token to relearn acceptance...
_PROBE_LAST = 256    # ...doubling after each probe that does not turn speculation on, up to this
_MARGIN = 1.02       # a width must beat a plain step's expected rate by this factor
NEW_ROW_CAP: float | None = 0.5  # None: a new n-gram row starts from the prior; else at most this (see the top)
PRIOR_WEIGHT: float | None = 4.0  # None: a row learns at _EMA from its first observation; else see the top

# The most tokens a row drafts a step unless `serve --speculate-depth` says otherwise. The adaptive depth picks
# below it, so a deeper cap costs only the widths explored. Prompt lookup drafts for free and a copy goes on for
# tens of tokens: SmolLM2 rewriting a paragraph (96 tokens, the 2-core CPU, one stream) ran 1.99x plain at 4,
# 2.47x at 8, and in `bench speculation_replay` at the H200's verify costs (about flat past width 2) 1.46x and
# 1.58x; free text and 16 streams did not move beyond the rounds' spread. SHALLOW_DEPTH for a draft model, which
# pays a decode step of its own for each token it drafts (its drafts holding less the further they go), and for a
# model with recurrent layers, whose verify step runs them token by token and holds their states after each
# position (the KV budget reserves depth + 2 copies of a row's states: kv_budget.KvLayout.verifying).
NGRAM_DEPTH = 8
SHALLOW_DEPTH = 4


def default_depth(draft_model: bool, recurrent: bool) -> int:
    """The most drafts per row per step by default (see above)."""
    return SHALLOW_DEPTH if draft_model or recurrent else NGRAM_DEPTH


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
        """`depth` tokens that followed the latest earlier occurrence of the longest matching suffix (none without
        one), repeating from the match on where it is nearer the end than `depth`."""
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
                # What followed the match, and past the end the same again: the tokens since the match repeat
                # with that period (a loop shorter than the depth drafts the whole depth, as llama.cpp's lookup,
                # which looks each drafted token up in turn, does).
                drafted = tokens[found:min(found + depth, end)]
                period = end - found
                while len(drafted) < depth:
                    drafted.append(drafted[len(drafted) - period])
                return drafted
        return []


@dataclass
class _RowSpeculation:
    index: NgramIndex
    cap: int                                  # the most drafts per step this row takes
    acceptance: float
    probe: int | None = None                  # the first token it would have drafted in a step without drafts
    observed: int = 0                         # drafts judged so far (PRIOR_WEIGHT's count)


@dataclass
class Speculator:
    """Per-row n-gram drafting with adaptive depth; the scheduler tells it each step's tokens and timing."""

    max_depth: int = 4
    max_ngram: int = 3
    adaptive: bool = True                                    # False: always the row's cap
    model: DraftModel | None = None                          # drafts by this model instead of n-gram lookup
    _rows: dict[int, _RowSpeculation] = field(default_factory=dict)
    costs: StepCosts = field(default_factory=StepCosts)
    _prior: float = _PRIOR              # the acceptance all rows have shown: a new row starts from it (see the top)
    _probe_after: int = _PROBE_FIRST    # plain steps before a draft model's batch probes
    _plain_steps: int = 0               # the batch's steps since it last drafted, while some row could draft
    _could_draft: bool = True           # the step being judged holds a row that may draft (wants_drafts)
    _probing: bool = False              # the step being drafted is a probe (its time is not learned)
    _flush_yield: float = _PRIOR        # how often n-gram drafts found a token early still drafted once read
    _guessed: bool = False              # the last wants_drafts judged drafts found a token early

    def start(self, row: int, prompt: list[int], cap: int | None) -> None:
        """Draft for this row from now on, at most `cap` tokens a step (None: max_depth; 0: never)."""
        depth = self.max_depth if cap is None else min(cap, self.max_depth)
        if depth > 0:
            start = self._prior if self.model is not None or NEW_ROW_CAP is None else min(self._prior, NEW_ROW_CAP)
            self._rows[row] = _RowSpeculation(NgramIndex(prompt if self.model is None else [], self.max_ngram),
                                              depth, start)
            if self.model is not None:
                self.model.start(row, prompt)

    def forget(self, row: int) -> None:
        self._rows.pop(row, None)
        if self.model is not None:
            self.model.forget(row)

    def wants_drafts(self, rooms: dict[int, int], pending: Collection[int] = ()) -> bool:
        """Whether the next step would verify drafts (rooms: the tokens each row may still generate). `pending`: the
        rows whose newest token a queued plain step is still computing; reading it drains the pipeline (on a GPU
        the device's part of a step), so n-gram rows look their drafts up now, theirs one token early: the first
        token found stands for the newest one, the rest for the drafts after it. The first token a row finds is its
        probe (checked when the token it foretells is read). A draft model's rows, and every row at a fixed depth,
        are assumed to find full drafts."""
        caps = {row: self._cap(row, room) for row, room in rooms.items()}
        self._could_draft = any(caps.values())
        if self.model is not None or not self.adaptive:
            return self._width(caps, len(rooms)) > 1 or bool(self._probe_rows(caps, rooms))
        found, guessed = {}, set()
        for row, cap in caps.items():
            spec = self._rows.get(row)
            if spec is not None:
                early = int(row in pending)
                proposal = spec.index.draft(max(cap + early, 1))
                spec.probe = proposal[0] if proposal else None
                found[row] = max(0, min(cap, len(proposal) - early))
                if early:
                    guessed.add(row)
        self._guessed = bool(guessed)
        return self._width(found, len(rooms), guessed) > 1

    def _probe_rows(self, caps: dict[int, int], rooms: dict[int, int]) -> list[int]:
        """The rows a draft model's batch probes now, drafting one token each to relearn its acceptance (see the
        top): none before the wait is over, and never a row with no more than _PROBE_FIRST tokens to go. A probe
        catches the draft model up on each row's every token since its last draft (its whole prompt and output at
        first), which a row near its end cannot earn back: the last row of a 16-row batch of a tiny Llama drafting
        for itself (CPU) probed as it ended, ~35 ms against ~1.6 ms a step, in every round."""
        if self.model is None or self._plain_steps < self._probe_after:
            return []
        return [row for row, cap in caps.items() if cap and rooms[row] > _PROBE_FIRST]

    def drafts(self, rooms: dict[int, int]) -> dict[int, list[int]]:
        """Each row's drafts for the next step (rows without any left out); {} for a plain step."""
        if self.model is not None:
            caps = {row: self._cap(row, room) for row, room in rooms.items()}
            width = self._width(caps, len(rooms))
            if width > 1 and self._plain_steps == 0:  # the step before drafted too: speculation holds
                self._probe_after = _PROBE_FIRST
            elif width > 1:  # a try after plain steps (a width's cost not measured, or forgotten for its retry)
                self._probe_after = min(2 * self._probe_after, _PROBE_LAST)
            elif probes := self._probe_rows(caps, rooms):
                # no free check of what a model would have drafted: try one token now and then
                self._probe_after = min(2 * self._probe_after, _PROBE_LAST)
                self._probing = True
                return self.model.draft(dict.fromkeys(probes, 1))
            return self.model.draft({row: min(cap, width - 1) for row, cap in caps.items()})
        proposals = {}
        for row, room in rooms.items():
            spec = self._rows.get(row)
            if spec is not None:
                proposals[row] = spec.index.draft(self._cap(row, room))
        width = self._width({row: len(p) for row, p in proposals.items()}, len(rooms))
        if self._guessed:  # the scheduler asks right after wants_drafts: did drafts found a token early still draft?
            self._flush_yield += _EMA * (float(width > 1) - self._flush_yield)
            self._guessed = False
        for row, proposal in proposals.items():
            self._rows[row].probe = proposal[0] if proposal and width == 1 else None
        return {row: p[:width - 1] for row, p in proposals.items() if p and width > 1}

    def _cap(self, row: int, room: int) -> int:
        """The most tokens the row may draft now: its cap, and one fewer than the tokens it may still generate."""
        spec = self._rows.get(row)
        return 0 if spec is None else max(0, min(spec.cap, room - 1))

    def _width(self, drafting: dict[int, int], rows: int, guessed: Collection[int] = ()) -> int:
        """L for a step of `rows` rows where each row in `drafting` could draft up to that many tokens (rows of
        requests that turned speculation off are in the batch, not the speculator: they draft nothing). Rows in
        `guessed` found theirs a token early (wants_drafts), and reading the newest token drains the pipeline: their
        drafts count as often as such looks have still drafted once the token was read (`_flush_yield`), or as
        the row's acceptance (the chance the lookup's first token is the newest one) where that is more. Counted
        whole, 16 free-text rows at acceptance 0.2 drained the pipeline in most steps on an H100 and found no
        drafts after all (0.89x plain in-process); counted at the acceptance alone, a JSON record copied on the CPU
        (where draining costs little) drafted less than it gained from (1.38x plain against 1.45x)."""
        drafters = []  # (acceptance, drafts, how likely they hold)
        for row, k in drafting.items():
            if k > 0 and row in self._rows:
                acceptance = self._rows[row].acceptance
                drafters.append((acceptance, k, max(acceptance, self._flush_yield) if row in guessed else 1.0))
        deepest = max((k for _, k, _ in drafters), default=0)
        if not self.adaptive:
            return 1 + deepest
        plain = self.costs.plain(rows)
        if deepest == 0 or plain is None:
            return 1  # nothing to draft, or no plain step of this batch measured yet to compare against
        widths = range(2, min(deepest, self.costs.widest()) + 2)  # upwards: one above the widest known
        assumed = {width: self.costs.verify(rows, width) for width in widths}
        best, best_rate = 1, rows / plain
        # First a bound: every drafter at the highest acceptance any shows, drafting the whole width. Where even that
        # loses to a plain step (free text: the common case), the sum over rows below is not needed; this runs
        # before every step of a batch that speculates (0.1 ms of a 16-row step's host work on an H200).
        top = max(acceptance for acceptance, _, _ in drafters)
        if all(rows + len(drafters) * (self.expected(top, width - 1) - 1) <= best_rate * _MARGIN * assumed[width]
               for width in widths):
            return 1
        for width in widths:
            tokens = rows + sum((self.expected(acceptance, min(k, width - 1)) - 1) * holds
                                for acceptance, k, holds in drafters)
            if tokens / assumed[width] > best_rate * _MARGIN:  # a margin: noise alone never turns speculation on
                best, best_rate = width, tokens / assumed[width]
        return best

    def describe(self, rows: int) -> str:
        """The policy's state for a batch of `rows` rows, for a debug log line."""
        plain = self.costs.plain(rows)
        verify = {w: round(s * 1e3, 2) for (r, w), s in self.costs.measured_verify().items() if r == rows}
        acceptance = [round(spec.acceptance, 2) for spec in self._rows.values()]
        return (f"plain {'-' if plain is None else round(plain * 1e3, 2)} ms, verify {verify} ms, "
                f"acceptance {acceptance}, prior {self._prior:.2f}")

    @staticmethod
    def expected(acceptance: float, drafts: int) -> float:
        """The tokens a row gets from a step with `drafts` drafts at this acceptance (1 with none)."""
        if acceptance >= 1.0:
            return float(drafts + 1)
        return (1 - acceptance ** (drafts + 1)) / (1 - acceptance)

    def observe(self, row: int, drafted: list[int], tokens: list[int]) -> None:
        """A step gave the row `tokens` after `drafted` drafts (none in a plain step)."""
        spec = self._rows.get(row)
        if spec is None:
            return
        if drafted:
            accepted = len(tokens) - 1
            for j in range(min(len(drafted), accepted + 1)):
                self._learn(spec, j < accepted)
        elif spec.probe is not None and tokens:
            self._learn(spec, tokens[0] == spec.probe)
        spec.probe = None
        if self.model is not None:
            self.model.observe(row, drafted, tokens)
        else:
            spec.index.extend(tokens)

    def _learn(self, spec: _RowSpeculation, accepted: bool) -> None:
        spec.observed += 1
        weight = _EMA
        if PRIOR_WEIGHT is not None and self.model is None:  # n-gram rows only (see the top)
            weight = max(_EMA, 1.0 / (PRIOR_WEIGHT + spec.observed))
        spec.acceptance += weight * (float(accepted) - spec.acceptance)
        self._prior += _PRIOR_EMA * (float(accepted) - self._prior)

    def timed(self, rows: int, length: int, seconds: float) -> None:
        """A step of `rows` rows feeding `length` tokens each took `seconds` (a verify step's drafting included, less
        a draft model's catch-up on what the rows generated while the batch did not draft: DraftModel.caught_up)."""
        if length > 1:
            self._plain_steps = 0
        elif self._could_draft:  # steps of rows that never draft (speculation off, at their end) are no wait
            self._plain_steps += 1
        if self._probing:
            self._probing = False
            return
        if length > 1 and self.model is not None:
            seconds = max(0.0, seconds - self.model.caught_up)
        self.costs.timed(rows, length, seconds)
