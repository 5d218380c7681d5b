"""What a step does for its constrained rows (engine/constraint.py), apart from the model: the masks of a plain
step and of a verify step's positions, and telling each constraint the tokens its row generated; a plain step's
CPU work for the mask thread (`tell_then_fill`).

A step's result per row (StepResult) lives here too: telling the constraints is what completes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import mlx.core as mx

from mlxd.engine.constraint import TokenConstraint
from mlxd.engine.mask_thread import HandOff
from mlxd.engine.masks import FilledMasks, apply_masks, draft_masks, fill_masks, upload_masks
from mlxd.engine.request import TokenLogprob
from mlxd.models import ops

RowId = int

# A plain step's masks put on the device by the mask thread (tell_then_fill), while the worker launches the forward
# pass; False: by the worker as it queues the sampling, as before session 49. On an H100's host the upload of 16
# rows' masks (256 KB for a 128k vocabulary; MLX's CUDA buffers are managed memory) took ~0.17 ms of the worker.
UPLOAD_ON_MASK_THREAD = True


@dataclass(frozen=True)
class StepResult:
    row: RowId
    tokens: list[int]                      # one, or a verify step's accepted run (1..k+1)
    logprobs: list[TokenLogprob] | None    # one per token; None when the row asked for none
    constraint_done: bool = False  # the row's constraint is complete after this token
    error: Exception | None = None  # the row's constraint failed (a grammar past its limits): end this row only


class ConstrainedRow(Protocol):
    constraint: TokenConstraint | None
    failure: Exception | None   # its constraint failed: reported with the row's next result, which ends it


def going_on(r: ConstrainedRow) -> TokenConstraint | None:
    """The row's constraint while it applies (not failed, not complete)."""
    c = r.constraint
    return c if c is not None and r.failure is None and not c.is_stopped() else None


def fill_step_masks(rows: Sequence[ConstrainedRow], width: int) -> FilledMasks:
    """A plain step's masks (CPU work, safe on another thread while the worker launches the forward pass: it
    touches only the rows' constraints)."""
    return fill_masks([going_on(r) for r in rows], width)


def apply_step_masks(logits: mx.array, rows: Sequence[ConstrainedRow], masks: FilledMasks) -> mx.array:
    for i, failure in masks.failures.items():
        rows[i].failure = failure
    return apply_masks(logits, masks)


def verify_masks(logits: mx.array, rows: Sequence[ConstrainedRow],
                 fed: list[list[int]]) -> tuple[mx.array, list[list[int]]]:
    """A verify step's logits [B, L, vocab] with each constrained row's masks applied at every position it
    verifies, and the drafts cut where its constraint refuses them (engine/masks.py draft_masks); what a row fed
    past its cut draft is rejected like a padded column."""
    drafted = draft_masks([going_on(r) for r in rows], fed, logits.shape[-1])
    for i, failure in drafted.failures.items():  # its own mask failed: the row ends with its result
        rows[i].failure = failure
    return ops.mask_logits(logits, drafted.masks), drafted.drafts


def tell_constraints(results: list[StepResult], owners: Sequence[ConstrainedRow]) -> list[StepResult]:
    """Tell each row's constraint the tokens it generated (closed rows' too; a verify step's run is cut after
    the token that completes the constraint, since nothing may follow); say which are now complete."""
    out = []
    for result, r in zip(results, owners):
        constraint = r.constraint
        if constraint is None or (r.failure is None and constraint.is_stopped()):
            out.append(result)  # unconstrained, or complete already (the caller ends it)
            continue
        told = 0
        if r.failure is None:
            try:
                for token in result.tokens:
                    constraint.consume(token)
                    told += 1
                    if constraint.is_stopped():
                        break
            except Exception as error:  # one grammar's failure ends its row, not the batch
                r.failure = error
        done = r.failure is None and constraint.is_stopped()
        tokens, logprobs = result.tokens, result.logprobs
        if done and told < len(tokens):
            tokens, logprobs = tokens[:told], None if logprobs is None else logprobs[:told]
        out.append(StepResult(result.row, tokens, logprobs, done, r.failure))
    return out


def tell_then_fill(read: Callable[[], list[StepResult]], owners: Sequence[ConstrainedRow],
                   rows: Sequence[ConstrainedRow], width: int, told: HandOff[list[StepResult]],
                   upload: bool = True) -> FilledMasks:
    """A constrained step's CPU work, on the mask thread: the step before's tokens read (waiting for the device)
    and told to their rows' constraints (`told` given the results as soon as they are), then this step's masks
    filled (they follow from those tokens) and, with `upload` (not a checking step's, read on the host), put on
    the device for logits [len(rows), width]. The worker touches no constraint until this returns (it waits for
    the masks before sampling, Runner._constrained_step, or before the next step, Runner._settle)."""
    try:
        told.set(tell_constraints(read(), owners))
    except BaseException as error:
        told.fail(error)
        raise
    masks = fill_step_masks(rows, width)
    if upload and UPLOAD_ON_MASK_THREAD:
        upload_masks(masks, len(rows), width)
    return masks

