"""Constrained greedy rows decoded as free ones, their tokens checked against the grammar afterwards.

A constrained step (engine/constrained_rows.py) applies each row's mask on the device before sampling: its
sampling waits for the masks, so it is a launch of its own after the forward pass, with the masks' upload and
select before it. Where the host bounds a GPU's step (a random 1B's one-row step is ~1.7 ms of Python and kernel
launches) that structure alone cost ~0.25 ms a step (docs/performance.md, session 40). A greedy row needs none
of it while its grammar allows what it would have chosen anyway: the masked argmax is the argmax whenever the
argmax is allowed (masking only removes tokens; ties go to the lowest id either way). So such a row takes its
argmax in the forward's own launch, as a free row does, and the host checks the token against the mask before it
is used (llama.cpp samples so too: the grammar checks the chosen token first and masks only when it refuses).
A refused token is replaced by the masked argmax of the same logits, kept for that (a launch and a read, only
then); where the next forward was already built on the refused token (not launched: the check comes first), the
caches go back to their checkpoint from before the build, which drops the refused graph, and the forward is built
again (runner.py `_checked_step`).

Which steps check rather than mask (`checks`): the runner's, when every constrained row still going is plainly
greedy without logprobs (sampling and logprobs must see the constrained distribution: they keep the masks), every
cache can go back to a checkpoint (`could_check`), and, where steps are pipelined (`PIPELINED`), the batch is one
row (`PIPELINED_ROWS`: a checking step launches only after reading the step before, which a larger batch's masked
steps outrun) and the rows' refusals are rare: a refusal there costs a second build of the forward. Each row
learns its refusal rate (`refusal_rate`), starting from `PRIOR`, from every step either way: a checking step's
checks, and a masked step's argmax of its logits before the masks, read with its tokens (`learn`: the grammar
refused the argmax where masking chose another token), so a batch goes back to checking when its rows' argmax is
allowed again, without trying.
Unpipelined (the CPU), a refusal costs only the masked sampling every masked step pays, so those steps always
check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, cast

import mlx.core as mx
import numpy as np

from mlxd.engine.constrained_rows import StepResult, going_on
from mlxd.engine.constraint import TokenConstraint
from mlxd.engine.masks import FilledMasks, allows
from mlxd.generation.sampling import Sampler
from mlxd.models import ops
from mlxd.models.batch_cache import BatchKVCache, KVCheckpoint

if TYPE_CHECKING:  # a queued step reads through `learn`
    from mlxd.engine.queued_step import QueuedStep

ENABLED = True
# Checking where steps are pipelined (a GPU's): on since session 47. On an H200 (session 44, random 1B with
# SmolLM2's tokenizer, `strings`, one stream in-process) checked steps ran at 0.953 / 0.939 of free over 128 tokens
# where masked ones ran at 0.870 / 0.918. Its 256-token rows, where checking lost (0.919-0.971 of masked), ran
# `short-strings` (the bench's --fill was ignored), whose 12-character bound refuses the random model's argmax 79 %
# of the time against 1.6 % under `strings` (bench refusal_rates, session 47). Since session 45 a refusal costs no
# refused forward (the caches' checkpoint) and masked steps teach the rates (`learn`), so such rows mask. On an H100
# (session 48, `strings`, 256 tokens) one row masked ran 0.983 of checked; batches check no more (PIPELINED_ROWS).
PIPELINED = True
PRIOR = 0.05               # a new row's refusal rate
LEARNING = 0.1             # each step's weight in a row's refusal rate
# Pipelined: check while the batch's refusal rates sum to at most this. A refusal costs a second build of the forward
# and the correction's launch and read (~0.7 + ~0.15 ms for a random 1B's row on an H100: session 40's timeline),
# a masked step ~0.25 ms of structure; they break even near 0.3 refusals a step.
EXPECTED_REFUSALS = 0.3
# Pipelined: check only batches of at most this many rows. A checking step reads the step before's tokens before it
# launches (its check comes first), so the device waits on the host's launch every step; masking keeps the pipeline.
# H100, random 1B with SmolLM2's tokenizer, `strings` (refused 1.6 % a row), 256 tokens, 3 mask processes, masked
# against checked in interleaved rounds (session 48): 1 row 0.983, 4 rows 1.067, 8 rows 1.208, 16 rows 1.229.
PIPELINED_ROWS = 1


class CheckedRow(Protocol):
    sampler: Sampler
    constraint: TokenConstraint | None
    failure: Exception | None
    top_logprobs: int | None
    refusal_rate: float


def _checkable(r: CheckedRow) -> bool:
    return r.sampler.plain_greedy and r.top_logprobs is None


def could_check(rows: Sequence[CheckedRow], caches: Sequence[object], pipelined: bool) -> bool:
    """Whether a step of these rows may check its constrained rows' tokens instead of masking them, however often
    they are refused: every constrained row going on plainly greedy without logprobs, every layer's cache able to go
    back to a checkpoint (BatchKVCache), and (pipelined) a batch of at most PIPELINED_ROWS rows. Only then do a
    masked step's rows learn their refusal rates (`learn`): a larger batch masks whatever they are."""
    return _constrained_if_checkable(rows, caches, pipelined) is not None


def checks(rows: Sequence[CheckedRow], caches: Sequence[object], pipelined: bool) -> bool:
    """Whether a step of these rows checks its constrained rows' tokens instead of masking them: where it may,
    and (pipelined) their refusals are rare."""
    constrained = _constrained_if_checkable(rows, caches, pipelined)
    return constrained is not None and (
        not pipelined or sum(r.refusal_rate for r in constrained) <= EXPECTED_REFUSALS)


def _constrained_if_checkable(rows: Sequence[CheckedRow], caches: Sequence[object],
                              pipelined: bool) -> list[CheckedRow] | None:
    """The constrained rows going on where a step of `rows` could check (`could_check`), else None."""
    if pipelined and (not PIPELINED or len(rows) > PIPELINED_ROWS):
        return None
    if not ENABLED or not all(isinstance(cache, BatchKVCache) for cache in caches):
        return None
    constrained = [r for r in rows if going_on(r) is not None]
    return constrained if all(_checkable(r) for r in constrained) else None


def unmasked_argmax(logits: mx.array, rows: Sequence[CheckedRow]) -> mx.array:
    """A masked step's argmax of its `logits` before the masks, as a checking step would take it (its own node:
    read on the mask thread with the step's tokens)."""
    return mx.argmax(argmax_logits(logits, rows), axis=-1).astype(mx.int32)


def learn(rows: Sequence[CheckedRow], tokens: Sequence[int], argmaxes: Sequence[int]) -> None:
    """A masked step's rows, read, learn their refusal rates: masking chose another token than the argmax exactly
    where the grammar refused the argmax (it keeps the argmax whenever allowed, ties to the lowest id either way)."""
    for r, token, argmax in zip(rows, tokens, argmaxes):
        if going_on(r) is not None and _checkable(r):
            _observe(r, token != argmax)


def _observe(r: CheckedRow, refused: bool) -> None:
    """One step's evidence in the row's refusal rate (an average over about the last 1 / LEARNING steps)."""
    r.refusal_rate += LEARNING * (refused - r.refusal_rate)


def checkpoints(caches: Sequence[object]) -> list[KVCheckpoint]:
    """Every layer's cache before a checking step's forward is built on unchecked tokens (`could_check` made sure
    each is a BatchKVCache)."""
    return [cast(BatchKVCache, cache).checkpoint() for cache in caches]


def restore(caches: Sequence[object], held: list[KVCheckpoint]) -> None:
    """Every layer's cache back to its checkpoint: a token was refused, the forward built on it is dropped."""
    for cache, checkpoint in zip(caches, held):
        cast(BatchKVCache, cache).restore(checkpoint)


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
    checked). Each checked row's refusal rate learns from it."""
    out = []
    for k, i in enumerate(masks.rows):
        r = rows[i]
        if i in masks.failures or going_on(r) is None:
            continue
        allowed = allows(masks.bitmasks[k], tokens[i])
        _observe(r, not allowed)
        if not allowed:
            out.append(i)
    return out


def corrected(logits: mx.array, indices: list[int], masks: FilledMasks) -> list[int]:
    """The masked argmax of `logits` [B, vocab] for the rows `indices` (each with a mask in `masks`), read."""
    where = {i: k for k, i in enumerate(masks.rows)}
    bitmasks = np.stack([masks.bitmasks[where[i]] for i in indices])
    chosen = ops.mask_logits(logits[mx.array(indices, dtype=mx.int32)], bitmasks)
    tokens = mx.argmax(chosen, axis=-1).astype(mx.int32)
    mx.eval(tokens)  # waits without the GIL
    return cast(list[int], tokens.tolist())


def check(step: QueuedStep, results: list[StepResult]) -> bool:
    """Check a checking step's tokens (its results, read) against their masks, a refused one replaced in `results`
    by the masked argmax of the step's logits; a row whose fill failed gets its failure. Whether any was refused.
    A step that did not check: nothing to do."""
    if step.check is None:
        return False
    masks = step.check.masks.result()
    for i, failure in masks.failures.items():
        step.owners[i].failure = failure
    bad = refused([result.tokens[-1] for result in results], cast(Sequence[CheckedRow], step.owners), masks)
    for i, token in zip(bad, corrected(step.check.logits, bad, masks) if bad else []):
        results[i] = StepResult(results[i].row, [token], None)
    return bool(bad)
