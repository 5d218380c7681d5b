"""The token masks of a decode step's constrained rows: filled on the CPU, then applied to the logits on the device.

llguidance's matchers (constraints/matcher.py RowConstraint) fill together, in one call on llguidance's own threads
without the GIL (or in the mask processes); any other TokenConstraint fills its row itself. A row whose constraint
fails keeps a mask that allows everything and carries the failure, which ends that row only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import mlx.core as mx
import numpy as np

from mlxd.constraints.compiler import mask_words
from mlxd.constraints.matcher import RowConstraint, fill_bitmasks
from mlxd.engine.constraint import TokenConstraint
from mlxd.models import ops
from mlxd.models.mask_buffers import MaskBuffers

# upload_masks writes a step's masks into arrays of the mask thread's own (models/mask_buffers.py) through NumPy,
# without the GIL, where mx.array's copy holds it; False: mx.array's copy (as session 49's first change did).
WRITE_IN_PLACE = True
_here = threading.local()   # each mask thread's MaskBuffers


@dataclass
class FilledMasks:
    rows: list[int]                    # the batch rows (indices) that are masked, in the order of `bitmasks`
    bitmasks: np.ndarray               # int32 [len(rows), words]: bit t of word t // 32 allows token t
    failures: dict[int, Exception] = field(default_factory=dict)  # batch row -> why its constraint failed
    empty: set[int] = field(default_factory=set)  # batch rows whose constraint allowed nothing (all allowed now)
    uploaded: ops.DeviceMasks | None = None  # the masks on the device already (upload_masks, on the mask thread)


def fill_masks(constraints: Sequence[TokenConstraint | None], width: int) -> FilledMasks:
    """The masks of the rows whose constraint is given (None: a free row, or one whose constraint is done or
    failed), for logits `width` wide."""
    rows = [i for i, c in enumerate(constraints) if c is not None]
    active = [cast(TokenConstraint, constraints[i]) for i in rows]
    # Rows as wide as the widest constraint's (a tokenizer wider than the logits); only `width` bits are read. A
    # tokenizer narrower than the logits (a padded vocabulary: Qwen's 151,936 logits for ~151.7k tokens) leaves
    # the words past its own zero: those ids are never allowed.
    words = max([mask_words(width), *(c.mask_words for c in active)])
    masks = FilledMasks(rows, np.zeros((len(rows), words), dtype=np.int32))
    # llguidance's rows fill together (in the mask processes where there are some), one call for each width their
    # tokenizers give, whether or not it is the logits' width (docs/performance.md, session 38: rows of a narrower
    # tokenizer had gone one at a time through fill_bitmask in this process, whatever --mask-processes said).
    widths: dict[int, list[int]] = {}
    for j, c in enumerate(active):
        if isinstance(c, RowConstraint):
            widths.setdefault(c.mask_words, []).append(j)
    for own, together in widths.items():
        # The usual batch, every row of one tokenizer as wide as the masks: filled in place, not copied after.
        whole = own == words and len(together) == len(rows)
        filled = masks.bitmasks if whole else np.zeros((len(together), own), dtype=np.int32)
        failures = fill_bitmasks([cast(RowConstraint, active[j]) for j in together], filled)
        if not whole:
            masks.bitmasks[together, :own] = filled
        masks.failures.update({rows[j]: failure for j, failure in zip(together, failures) if failure is not None})
    for j in (j for j, c in enumerate(active) if not isinstance(c, RowConstraint)):  # any other fills its own row
        try:
            active[j].fill_bitmask(masks.bitmasks[j, :active[j].mask_words])
        except Exception as error:  # reported with the row's next result, which ends it
            masks.failures[rows[j]] = error
    for j in np.flatnonzero(~masks.bitmasks.any(axis=1)).tolist():  # one pass over the masks, not one per row
        masks.bitmasks[j] = -1  # nothing allowed: a mask of nothing would sample NaN; the caller ends the row
        if rows[j] not in masks.failures:
            masks.empty.add(rows[j])
    return masks


@dataclass
class DraftMasks:
    masks: np.ndarray               # int32 [B, 1 + deepest draft, words]: row i's mask at each position it verifies
    drafts: list[list[int]]         # each row's drafts, cut before the first its constraint refuses
    failures: dict[int, Exception]  # batch row -> its own mask (position 0) failed: the row's failure


def draft_masks(constraints: Sequence[TokenConstraint | None], drafts: Sequence[list[int]],
                width: int) -> DraftMasks:
    """The masks of a verify step's positions (logits `width` wide): for each row whose constraint is given (None:
    a free row, whose drafts are kept as they are), position j allows the tokens its constraint allows after the
    row's first j drafts. A row's drafts are cut before the first its constraint refuses, so every position the
    target verifies has its mask; after a draft that completes the constraint, what follows is all allowed (the
    row ends there). A failure of a row's own mask (position 0) is the row's; one later only cuts its drafts there,
    as does a draft the constraint fails to consume or a mask that allows nothing. Each constraint is told its kept
    drafts to fill the masks after them, then rolled back, so it ends as it began.

    Position by position, the rows still following their drafts are filled together (fill_masks: one call into
    llguidance, or the mask processes' share of it), not row by row: 16 rows at 4 drafts are 5 batched fills."""
    rows = len(constraints)
    length = 1 + max((len(d) for d in drafts), default=0)
    active = [c for c in constraints if c is not None]
    words = max([mask_words(width), *(c.mask_words for c in active)])
    masks = np.full((rows, length, words), -1, dtype=np.int32)
    kept = [len(d) if c is None else 0 for c, d in zip(constraints, drafts)]
    told = [0] * rows
    failures: dict[int, Exception] = {}
    following = {i for i, c in enumerate(constraints) if c is not None}  # rows whose drafts are allowed so far
    for j in range(length):
        if not following:
            break
        filled = fill_masks([constraints[i] if i in following else None for i in range(rows)], width)
        going_on = set()
        for k, i in enumerate(filled.rows):
            if i in filled.failures or i in filled.empty:  # position 0: the row samples freely and ends; later: cut
                if j == 0 and i in filled.failures:
                    failures[i] = filled.failures[i]
                continue
            constraint = cast(TokenConstraint, constraints[i])
            # The whole row, zeros past the constraint's words included: a tokenizer narrower than the logits
            # allows none of the ids past it (left at -1, a verify step could take one and its grammar refuse it).
            masks[i, j] = 0
            masks[i, j, :filled.bitmasks.shape[1]] = filled.bitmasks[k]
            kept[i] = j
            if j == len(drafts[i]):
                continue
            token = drafts[i][j]
            if not allows(masks[i, j], token):
                continue
            try:
                constraint.consume(token)
            except Exception:  # a grammar past its limits mid-draft: the drafts end before the failure
                continue
            told[i] += 1
            if constraint.is_stopped():
                kept[i] = j + 1
            else:
                going_on.add(i)
        following = going_on
    for i, count in enumerate(told):
        if count:
            cast(TokenConstraint, constraints[i]).rollback(count)
    return DraftMasks(masks, [list(d[:k]) for d, k in zip(drafts, kept)], failures)


def allows(words: np.ndarray, token: int) -> bool:
    """Whether a mask row (int32 words: bit t of word t // 32 allows token t) allows `token` (ids past it: no)."""
    word = token // 32
    return word < words.shape[-1] and bool((int(words[word]) >> (token % 32)) & 1)


def upload_masks(masks: FilledMasks, batch: int, width: int) -> None:
    """The masks put on the device for logits [batch, width], where the thread filling them calls this: the upload
    is host work (~0.17 ms for 16 rows of a 128k vocabulary on an H100's host) the worker then does not do. Only
    a plain step's masks, on the mask thread, and only after the step before's tokens were read: the thread's own
    buffers (models/mask_buffers.py) are then free to write, without the GIL."""
    if masks.rows:
        masks.uploaded = ops.upload_masks(masks.bitmasks, _masked_rows(masks, batch), (batch, width),
                                          _thread_buffers() if WRITE_IN_PLACE else None)


def _thread_buffers() -> MaskBuffers:
    if not hasattr(_here, "buffers"):
        _here.buffers = MaskBuffers()
    buffers: MaskBuffers = _here.buffers
    return buffers


def apply_masks(logits: mx.array, masks: FilledMasks) -> mx.array:
    """logits [B, vocab] with each masked row's disallowed tokens at -inf (the other rows untouched)."""
    if not masks.rows:
        return logits
    uploaded = masks.uploaded
    if uploaded is None or uploaded.shape != tuple(logits.shape):
        uploaded = ops.upload_masks(masks.bitmasks, _masked_rows(masks, logits.shape[0]), tuple(logits.shape))
    return ops.apply_masks(logits, uploaded)


def _masked_rows(masks: FilledMasks, batch: int) -> list[int] | None:
    """The rows the masks cover, or None for every row of the batch (a batch of constrained rows only): then the
    mask covers the logits whole, without the copy, gather and scatter that masking some rows takes."""
    return None if masks.rows == list(range(batch)) else masks.rows
