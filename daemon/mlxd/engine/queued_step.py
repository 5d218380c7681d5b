"""A decode step the runner (engine/runner.py) queued and has not read yet: its rows, their tokens still being
computed, and reading them, the step's one sync."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import mlx.core as mx

from mlxd.engine.constrained_rows import ConstrainedRow, RowId, StepResult
from mlxd.engine.mask_thread import HandOff
from mlxd.engine.masks import FilledMasks
from mlxd.engine.scores import token_logprob


@dataclass
class CheckedStep:
    """What a checking step (engine/checked_greedy.py) leaves for the check of its tokens: its logits (to correct a
    refused token) and its rows' masks at the positions it sampled (filled on the mask thread, in the rows' order)."""

    logits: mx.array                  # [B, vocab], unmasked
    masks: HandOff[FilledMasks]


@dataclass
class QueuedStep:
    """The tokens of one queued decode step, still being computed; reading them is the step's one sync."""

    rows: list[RowId]
    tokens: mx.array                                  # int32 [B]
    scored: list[tuple[mx.array, ...] | None] = field(default_factory=list)  # per row: (chosen[, top ids, values])
    # The rows' state at queue time, in order: a row closed before the step is read (its last token, at max_tokens)
    # still tells its constraint that token, so the final can say whether the output is complete.
    owners: Sequence[ConstrainedRow] = field(default_factory=list)
    # The tokens as a node of their own, for reading on another thread (the mask thread) while this one launches
    # a graph that takes `tokens` as input: MLX's eval changes the arrays it waits on and those it walks through
    # (detaches them), so the two threads must not share an array. None: read `tokens`, on this thread only.
    readback: mx.array | None = None
    # A checking step's (engine/checked_greedy.py): its constrained rows' tokens are read and checked before use.
    check: CheckedStep | None = None

    def read(self) -> list[StepResult]:
        readable = self.tokens if self.readback is None else self.readback
        # mx.eval waits without the GIL (tolist would hold it), so the gRPC threads stream meanwhile.
        mx.eval(readable, *[a for arrays in self.scored if arrays for a in arrays])
        # int32 [B] reads back as ints; MLX's stub types every tolist() as any nesting of any scalar.
        tokens = cast(list[int], readable.tolist())
        return [StepResult(row, [token], None if lp is None else [token_logprob(token, lp)])
                for row, token, lp in zip(self.rows, tokens, self.scored)]
