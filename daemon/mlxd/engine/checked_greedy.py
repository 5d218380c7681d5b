"""Constrained greedy rows decoded as free ones, their tokens checked against the grammar afterwards, where steps
are not pipelined (the CPU).

A constrained step (engine/constrained_rows.py) applies each row's mask before sampling: its sampling waits for
the masks. A greedy row needs none of it while its grammar allows what it would have chosen anyway: the masked
argmax is the argmax whenever the argmax is allowed (masking only removes tokens; ties go to the lowest id either
way). So such a row takes its argmax as a free row does, and the host checks the token against the mask when it
reads the step (llama.cpp samples so too: the grammar checks the chosen token first and masks only when it
refuses). A refused token is replaced by the masked argmax of the same logits, kept for that (a select and a read,
only then). An unpipelined step is read before the next is built, so nothing is ever built on an unchecked token,
and a refusal costs only the masked sampling every masked step pays: such steps always check (`checks`) when every
constrained row going on is plainly greedy without logprobs (sampling and logprobs must see the constrained
distribution: they keep the masks).

Where steps are pipelined (a GPU's) they mask. From session 40 to 51 a pipelined step of one row checked too,
building the next forward on the unchecked token and launching it only after the check (the caches went back to a
checkpoint on a refusal), with refusal rates learnt per row to fall back to masks. It was worth ~0.25 ms a step on
a random 1B while the masked sampling was a launch of its own; since session 51 queues that sampling within the
step, masking ran 1.043x checking there and 1.115x on a random 8B, whose longer launch the check left the device
waiting for (session 52, H100, one stream in-process, 8 interleaved rounds; over gRPC constrained / free went
0.916 -> 1.010 on the 8B: docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import mlx.core as mx
import numpy as np

from mlxd.engine.constrained_rows import StepResult, going_on
from mlxd.engine.constraint import TokenConstraint
from mlxd.engine.masks import FilledMasks, allows
from mlxd.engine.queued_step import QueuedStep
from mlxd.generation.sampling import Sampler
from mlxd.models import ops

ENABLED = True


class CheckedRow(Protocol):
    sampler: Sampler
    constraint: TokenConstraint | None
    failure: Exception | None
    top_logprobs: int | None


def checks(rows: Sequence[CheckedRow], pipelined: bool) -> bool:
    """Whether a step of these rows checks its constrained rows' tokens instead of masking them: an unpipelined
    step whose constrained rows going on are all plainly greedy without logprobs."""
    return ENABLED and not pipelined and all(
        r.sampler.plain_greedy and r.top_logprobs is None for r in rows if going_on(r) is not None)


def argmax_logits(logits: mx.array, rows: Sequence[CheckedRow]) -> mx.array:
    """The logits a checking step's greedy rows take their argmax of: a constrained row's ids past its grammar's
    vocabulary (a tokenizer narrower than the logits: never allowed) at -inf, so its argmax is not refused for
    them. Every other row's logits as they are."""
    width = logits.shape[-1]
    limits = [min(width, _vocabulary(c)) if (c := going_on(r)) is not None else width for r in rows]
    if min(limits, default=width) == width:
        return logits
    if len(set(limits)) == 1:
        return logits[:, :limits[0]]  # the ids kept are the same
    columns = mx.arange(width, dtype=mx.int32)[None, :]
    within = columns < mx.array(limits, dtype=mx.int32)[:, None]
    return mx.where(within, logits, mx.array(-float("inf"), dtype=logits.dtype))


def _vocabulary(constraint: TokenConstraint) -> int:
    """The ids a constraint may ever allow, 0 .. this-1: its tokenizer's where it says (constraints/matcher.py
    RowConstraint.vocabulary; a random-weight model carrying SmolLM2's 49k tokens has 128k logits), else its mask's."""
    return int(getattr(constraint, "vocabulary", 32 * constraint.mask_words))


def refused(tokens: Sequence[int], rows: Sequence[CheckedRow], masks: FilledMasks) -> list[int]:
    """The indices of the rows whose token their mask refuses (rows without a mask, or whose fill failed, are not
    checked)."""
    return [i for k, i in enumerate(masks.rows)
            if i not in masks.failures and going_on(rows[i]) is not None and not allows(masks.bitmasks[k], tokens[i])]


def corrected(logits: mx.array, indices: list[int], masks: FilledMasks) -> list[int]:
    """The masked argmax of `logits` [B, vocab] for the rows `indices` (each with a mask in `masks`), read."""
    where = {i: k for k, i in enumerate(masks.rows)}
    bitmasks = np.stack([masks.bitmasks[where[i]] for i in indices])
    chosen = ops.mask_logits(logits[mx.array(indices, dtype=mx.int32)], bitmasks)
    tokens = mx.argmax(chosen, axis=-1).astype(mx.int32)
    mx.eval(tokens)  # waits without the GIL
    return cast(list[int], tokens.tolist())


def check(step: QueuedStep, results: list[StepResult]) -> None:
    """Check a checking step's tokens (its results, read) against their masks, a refused one replaced in `results`
    by the masked argmax of the step's logits; a row whose fill failed gets its failure. A step that did not
    check: nothing to do."""
    if step.check is None:
        return
    masks = step.check.masks.result()
    for i, failure in masks.failures.items():
        step.owners[i].failure = failure
    bad = refused([result.tokens[-1] for result in results], cast(Sequence[CheckedRow], step.owners), masks)
    for i, token in zip(bad, corrected(step.check.logits, bad, masks) if bad else []):
        results[i] = StepResult(results[i].row, [token], None)
