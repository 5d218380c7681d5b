"""The token masks of a decode step's constrained rows: filled on the CPU, then applied to the logits on the device.

llguidance's matchers (constraints/matcher.py RowConstraint) of the model's width fill together, in one call on
llguidance's own threads without the GIL; any other TokenConstraint fills its row itself. A row whose constraint
fails keeps a mask that allows everything and carries the failure, which ends that row only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import mlx.core as mx
import numpy as np

from mlxd.constraints.compiler import mask_words
from mlxd.constraints.matcher import RowConstraint, fill_bitmasks
from mlxd.engine.constraint import TokenConstraint
from mlxd.models import ops


@dataclass
class FilledMasks:
    rows: list[int]                    # the batch rows (indices) that are masked, in the order of `bitmasks`
    bitmasks: np.ndarray               # int32 [len(rows), words]: bit t of word t // 32 allows token t
    failures: dict[int, Exception] = field(default_factory=dict)  # batch row -> why its constraint failed


def fill_masks(constraints: Sequence[TokenConstraint | None], width: int) -> FilledMasks:
    """The masks of the rows whose constraint is given (None: a free row, or one whose constraint is done or
    failed), for logits `width` wide."""
    rows = [i for i, c in enumerate(constraints) if c is not None]
    active = [cast(TokenConstraint, constraints[i]) for i in rows]
    # Rows as wide as the widest constraint's (a tokenizer wider than the logits); only `width` bits are read.
    words = max([mask_words(width), *(c.mask_words for c in active)])
    masks = FilledMasks(rows, np.zeros((len(rows), words), dtype=np.int32))
    together = [j for j, c in enumerate(active) if isinstance(c, RowConstraint) and c.mask_words == words]
    if together:
        filled = np.zeros((len(together), words), dtype=np.int32)
        failures = fill_bitmasks([cast(RowConstraint, active[j]) for j in together], filled)
        masks.bitmasks[together] = filled
        masks.failures.update({rows[j]: failure for j, failure in zip(together, failures) if failure is not None})
    alone = set(range(len(active))) - set(together)
    for j in sorted(alone):
        try:
            active[j].fill_bitmask(masks.bitmasks[j, :active[j].mask_words])
        except Exception as error:  # reported with the row's next result, which ends it
            masks.failures[rows[j]] = error
    for j in range(len(rows)):
        if not masks.bitmasks[j].any():
            masks.bitmasks[j] = -1  # nothing allowed: a mask of nothing would sample NaN; the caller ends the row
    return masks


def draft_masks(constraint: TokenConstraint, draft: list[int]) -> tuple[np.ndarray, list[int]]:
    """The masks of a verify step's positions for a constrained row that drafted `draft`: int32 [1 + k, words],
    row j the tokens allowed after the first j drafts, and those k drafts: `draft` cut before its first token the
    constraint refuses, so every position the target verifies has its mask (after a draft that completes the
    constraint, all allowed: the row ends there). The constraint is told the kept drafts to fill the masks after
    them, then rolled back, so it ends as it began. A failure of the row's own mask (position 0) is raised; one
    later only cuts the draft there."""
    masks = np.full((1 + len(draft), constraint.mask_words), -1, dtype=np.int32)
    constraint.fill_bitmask(masks[0])
    if not masks[0].any():
        masks[0] = -1  # nothing allowed: as in a plain step, the row samples freely and its constraint ends it
        return masks[:1], []
    told = kept = 0
    try:
        for j, token in enumerate(draft):
            if not (masks[j, token // 32] >> (token % 32)) & 1:
                break
            constraint.consume(token)
            told += 1
            if constraint.is_stopped():
                kept = j + 1
                break
            constraint.fill_bitmask(masks[j + 1])
            if not masks[j + 1].any():
                break
            kept = j + 1
    except Exception:  # a grammar past its limits mid-draft: the drafts end before the failure
        pass
    finally:
        constraint.rollback(told)
    return masks[:1 + kept], draft[:kept]


def apply_masks(logits: mx.array, masks: FilledMasks) -> mx.array:
    """logits [B, vocab] with each masked row's disallowed tokens at -inf (the other rows untouched)."""
    if not masks.rows:
        return logits
    return ops.mask_logits(logits, masks.bitmasks, masks.rows)
