"""Token constraints that allow every token, for `batch_inprocess --fills`: a constrained step's structure (the
tokens told on the mask thread, the masks filled there, uploaded and applied before sampling) with a fill that
costs no CPU, or that only takes time. Beside llguidance's real fill in the same process they separate what a
constrained step pays for its structure from what the fill's CPU work costs the worker beside it (session 23 on
the H200: the constrained step's graph build and launch ran ~1.5 ms longer than a free step's, timed in runs one
after the other).

    allow-all   every token allowed, filled at once
    sleep:MS    the same, the step's fill taking MS ms of wall time without the CPU (split over its rows)
    spin:MS     the same, the step's fill taking MS ms of one core (split over its rows; the GIL released, as
                llguidance releases it)
    few:N       N ids allowed, the next N at each step (wrapping around the vocabulary), filled at once: a model's
                argmax is refused nearly every step (an unpipelined checked step's refusal,
                engine/checked_greedy.py, against allow-all's none; a fixed set would teach a real model to stay
                within it)
"""

from __future__ import annotations

import time

import numpy as np

from mlxd.engine.warmup import AnyToken


class AllowAll(AnyToken):
    """The warm-up's constraint that never refuses a token nor completes; its fill takes `fill_ms` (of the step, this
    row's share of `rows`) asleep, or spinning on a core with `spin`."""

    def __init__(self, width: int, fill_ms: float = 0.0, rows: int = 1, spin: bool = False) -> None:
        super().__init__(width)
        self._seconds = fill_ms / 1e3 / max(rows, 1)
        self._spin = spin

    def fill_bitmask(self, out: np.ndarray) -> None:
        if self._seconds and self._spin:
            _spin_without_gil(self._seconds)
        elif self._seconds:
            time.sleep(self._seconds)
        super().fill_bitmask(out)


class Few(AnyToken):
    """Allows n ids at a time, the next n after each token (within the logits' `width`), never complete."""

    def __init__(self, width: int, n: int) -> None:
        super().__init__(width)
        self._width, self._n, self._told = width, n, 0

    def fill_bitmask(self, out: np.ndarray) -> None:
        allowed = np.zeros(self.mask_words * 32, dtype=bool)
        allowed[(self._told * self._n + np.arange(self._n)) % self._width] = True
        out[:] = np.packbits(allowed, bitorder="little").view(np.int32)

    def consume(self, token: int) -> None:
        self._told += 1

    def rollback(self, tokens: int) -> None:
        self._told -= tokens


def _spin_without_gil(seconds: float) -> None:
    """Keep one core busy for `seconds` with the GIL released most of the time (NumPy's sort releases it), as
    llguidance's fill does."""
    block = np.random.default_rng(0).random(4096)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        np.sort(block, kind="stable")


def constraint_for(kind: str, width: int, rows: int) -> AnyToken:
    """The constraint `kind` names (see the module's text) for logits `width` wide, in a batch of `rows`."""
    name, _, ms = kind.partition(":")
    if name == "allow-all" and not ms:
        return AllowAll(width)
    if name == "few" and ms.isdigit():
        return Few(width, int(ms))
    if name in ("sleep", "spin") and ms:
        return AllowAll(width, float(ms), rows, spin=name == "spin")
    raise SystemExit(f"--fills {kind!r}: expected allow-all, sleep:MS, spin:MS or few:N (or schema, free)")
