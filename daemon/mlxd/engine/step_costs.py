"""What decode steps cost, measured, for the speculation policy (engine/speculation.py): a plain step of B rows
(pipelined) and a verify step of B rows at width L, its drafting included (a draft model's passes are part of
what speculation costs; a draft model's catch-up on the tokens of plain steps before it is not: engine/draft_model.py
`caught_up`). The pipeline's pause before a verify step (reading the plain step still queued) is not timed: counted
in, `bench speculation_replay`'s recorded SmolLM2 outputs at GPU-like costs kept free text at 0.99-1.00 of plain
(0.96-0.98 without) but cut the JSON record's ratio by up to 0.23 (1.28x to 1.05x; session 40): a pause is paid
once before a run of verify steps, not by each.

Each cost is the median of its latest measurements, not a mean: on a GPU the first step of a new shape compiles
kernels for up to seconds, and one such step in a mean made plain steps look dear (so speculation cheap) for dozens
of steps. An unmeasured verify step is assumed to cost the ratio to a plain step measured at the nearest width
below it (and the nearest batch size), or a plain step's cost if no verify step was measured yet: optimistic, so a
width is tried once before it is judged, and a batch that grows by one row does not explore again. A verify cost
is forgotten a while after it was last measured: measured in a slow spell, it would keep speculation off for good.

A verify cost of fewer than three measurements is provisional: the least of them (compiling only ever slows a
step), forgotten RETRY steps after it was measured, so the width is tried again (measured twice, its least still
stands for other batch sizes meanwhile). On an H200 the first verify step of
each width compiled kernels for up to seconds; measured once at that, n-gram lookup on a copy-heavy task never
drafted again in its daemon's life (STALE steps are minutes of serving).

A width measured once and forgotten for its retry still bounds the exploration, and its measurement still counts
as a hint, where it is plausible: at most _PLAUSIBLE x L plain steps for width L (a compiling step is hundreds).
Without it, on an H100 a rewrite after a warm round (each width 2-9 measured once, all forgotten 32 steps later)
knew one width's cost, width 2 at 2.8x a plain step, and so weighed only widths 2 and 3: its drafts, which held 98 %
of the time, paid at neither until its 64th step of 66, while widths up to 9 had cost 2.1-2.9x (session 43).

A verify step is never taken as cheaper than a plain step of the same rows: it does all of a plain step's work and
more. Measured cheaper, the plain cost is stale (plain steps are not timed while the batch speculates), so it is
forgotten and measured again; and no plain cost counts before three measurements. On an H200 the first plain step
of the first request took 4.7 s (kernels compiling), and judged against it a draft model with acceptance 0 drafted
for the whole request: 11 tok/s against 185 plain.
"""

from __future__ import annotations

import statistics
from collections import deque

_SAMPLES = 9     # a cost is the median of the latest this many of its measurements
_FIRM = 3        # measurements before a cost is firm (one may have compiled): a plain cost counts from then, a
#                  verify cost is provisional before
STALE = 2048     # steps after which a verify step's cost is forgotten
RETRY = 32       # steps after which a provisional verify cost is tried again
_PLAUSIBLE = 2   # a verify step of width L measured once is a hint up to this many times L plain steps (see the top)


class StepCosts:
    def __init__(self) -> None:
        self._plain: dict[int, float] = {}               # rows -> seconds of a plain step
        self._verify: dict[tuple[int, int], float] = {}  # (rows, L) -> seconds, drafting included
        self._samples: dict[object, deque[float]] = {}   # the latest measurements behind each
        self._measured: dict[tuple[int, int], int] = {}  # (rows, L) -> the step it was last timed
        self._widest_tried = 1                           # the widest L in _measured
        self._steps = 0
        self._known: dict[tuple[int, int], float] | None = None  # _known_verify's, until the next timing

    def plain(self, rows: int) -> float | None:
        """A plain step's cost for this batch size, None while measured fewer than _FIRM times."""
        samples = self._samples.get(rows)
        return self._plain.get(rows) if samples is not None and len(samples) >= _FIRM else None

    def measured_verify(self) -> dict[tuple[int, int], float]:
        return dict(self._verify)

    def widest(self) -> int:
        """The widest verify step whose cost is known, measured or a hint (1: none): see the top. Asked before every
        step of a batch that may draft: the hints are gathered only when a width wider than the measured ones was
        tried (they cost ~0.1 ms at 16 batch sizes' widths)."""
        measured = max((w for _, w in self._verify), default=1)
        if self._widest_tried <= measured:
            return measured
        return max((w for _, w in self._known_verify()), default=1)

    def verify(self, rows: int, width: int) -> float:
        """A verify step's cost (a plain step of `rows` rows must be measured): see the top."""
        plain = self._plain[rows]
        if (rows, width) in self._verify:
            return max(plain, self._verify[rows, width])
        known = self._known_verify()
        near = [(width - w, abs(rows - r), r, w) for r, w in known
                if w <= width and r in self._plain and (r, w) != (rows, width)]
        if not near:
            return plain
        _, _, r, w = min(near)
        return plain * max(1.0, known[r, w] / self._plain[r])

    def _known_verify(self) -> dict[tuple[int, int], float]:
        """The verify costs, and the least measurement of each provisional one forgotten for its retry if it was
        measured twice (compiling slows only the first step of a shape): a hint for other batch sizes. Without
        it, a draft model's verify measured at 5x a plain step for one row was forgotten for its retry, and each
        new 16-row batch assumed a verify step as cheap as a plain one and drafted at its first step, its draft
        model catching up on 16 prompts (40-140 ms on an H100, against ~7 ms a step)."""
        if self._known is None:  # made once between two steps' timings: a step asks for up to five widths
            self._known = dict(self._verify)
            for rows, width in self._measured:  # every verify cost's measurements, forgotten or not
                samples = self._samples[rows, width]
                if (rows, width) not in self._known and self._hints(rows, width, samples):
                    self._known[rows, width] = min(samples)
        return self._known

    def _hints(self, rows: int, width: int, samples: deque[float]) -> bool:
        """Whether a forgotten verify cost's measurements still hint at it: twice measured, or once within
        _PLAUSIBLE x width plain steps (see the top)."""
        plain = self._plain.get(rows)
        return len(samples) >= 2 or (plain is not None and samples[0] <= _PLAUSIBLE * width * plain)

    def timed(self, rows: int, length: int, seconds: float) -> None:
        """A step of `rows` rows feeding `length` tokens each took `seconds`."""
        self._steps += 1
        self._known = None
        self._forget_due()
        key = rows if length == 1 else (rows, length)
        samples = self._samples.setdefault(key, deque(maxlen=_SAMPLES))
        samples.append(seconds)
        cost = statistics.median(samples)
        if length == 1:
            self._plain[rows] = cost
        else:
            self._verify[rows, length] = cost if len(samples) >= _FIRM else min(samples)
            self._measured[rows, length] = self._steps
            self._widest_tried = max(self._widest_tried, length)
            if rows in self._plain and self._verify[rows, length] < self._plain[rows]:
                # Less than a plain step: the plain cost is stale (see the top); measure it again before judging.
                del self._plain[rows], self._samples[rows]

    def _forget_due(self) -> None:
        """Provisional verify costs whose retry is due go (their measurements stay, for the next one's least);
        every 256 steps, verify costs measured more than STALE steps ago go with their measurements."""
        for key in [k for k in self._verify
                    if len(self._samples[k]) < _FIRM and self._steps - self._measured[k] >= RETRY]:
            del self._verify[key]
        if self._steps % 256 == 0:
            for stale in [k for k, at in self._measured.items() if self._steps - at > STALE]:
                del self._measured[stale], self._samples[stale]
                self._verify.pop(stale, None)
            self._widest_tried = max((w for _, w in self._measured), default=1)
