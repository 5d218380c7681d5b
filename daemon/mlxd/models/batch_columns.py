"""The column bookkeeping of a batch cache once rows hold holes (models/batch_cache.py), in numpy on the host.

A speculative verify step writes 1 + k columns for every row; the columns a row rejects become holes, so a row's
kept positions are no longer one contiguous run. `valid` [B, columns] (bool) says which columns hold a position of
their row. Positions need not be stored: within a row the kept columns are in position order with no position
skipped, so the distance between a query and a key is the number of valid columns after the key up to the query
(a cumulative sum), which is all the causal and sliding-window masks need.
"""

from __future__ import annotations

import numpy as np


def contiguous_valid(starts: list[int], end: int) -> np.ndarray:
    """`valid` of the hole-free layout: row r holds columns [starts[r], end)."""
    return np.arange(end)[None, :] >= np.array(starts, dtype=np.int64).reshape(-1, 1)


def visible(valid: np.ndarray, length: int, window: int | None) -> np.ndarray:
    """[B, length, columns + length]: whether query l (written at column columns + l) sees each column, given the
    columns held before the step (`valid`) and the `length` new ones, all valid, each row's in position order."""
    batch = valid.shape[0]
    held = np.concatenate([valid, np.ones((batch, length), dtype=bool)], axis=1)
    seen = np.cumsum(held, axis=1)                       # position of each valid column, up to a row constant
    distance = seen[:, -length:, None] - seen[:, None, :]  # query position - key position, for valid keys
    mask = held[:, None, :] & (distance >= 0)
    if window is not None:
        mask &= distance < window
    return mask


def needed(valid: np.ndarray, window: int | None) -> np.ndarray:
    """The columns some query of the next steps may still see: valid ones, within the window of the next query."""
    if window is None:
        return valid
    # The next query sits one past the last column; a key is `later` valid columns (itself included) before it.
    later = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1]
    return valid & (later < window)


def squeeze_plan(keep: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Gather indices [B, width] that right-align each row's kept columns (keep [B, columns]) without holes, and
    each row's first kept column after it (its start). Padding on the left points at column 0 (masked)."""
    counts = keep.sum(axis=1)
    width = int(counts.max(initial=0))
    index = np.zeros((keep.shape[0], width), dtype=np.int32)
    for r in range(keep.shape[0]):
        columns = np.nonzero(keep[r])[0]
        if len(columns):
            index[r, width - len(columns):] = columns
    return index, [width - int(c) for c in counts]
