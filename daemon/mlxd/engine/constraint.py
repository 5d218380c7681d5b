"""What the runner needs of a row's token constraint (a grammar: JSON Schema, regex, Lark, GBNF), and the mask on
the device.

The constraint lives on the CPU (llguidance's matcher, mlxd/constraints/); each decode step it fills a bitmask
of the tokens it allows next (bit t of word t // 32 set: token t allowed), and it is told each token the row
generated. The runner turns the batch's bitmasks into one boolean mask on the device and sets the logits of
disallowed tokens to -inf before sampling, so every sampling setting (temperature, top-k/p, penalties, logit bias,
seeds) and the logprobs act on the constrained distribution.
"""

from __future__ import annotations

from typing import Protocol

import mlx.core as mx
import numpy as np


class TokenConstraint(Protocol):
    def fill_bitmask(self, out: np.ndarray) -> None:
        """Write the allowed next tokens into `out`, an int32 row of ceil(logits width / 32) words."""

    def consume(self, token: int) -> None:
        """The token the row generated (always one the last mask allowed)."""

    def is_stopped(self) -> bool:
        """The constraint is complete: nothing may follow (the sequence ends with STOP)."""


def bitmask_words(width: int) -> int:
    return (width + 31) // 32


def allowed_tokens(bitmasks: mx.array, width: int) -> mx.array:
    """bool [rows, width] from int32 bitmasks [rows, words]: token t is allowed when bit t % 32 of word t // 32 is
    set. Shifts on the device: a few kilobytes cross from the CPU instead of a byte per token."""
    bits = mx.right_shift(bitmasks[:, :, None], mx.arange(32, dtype=mx.int32)) & 1
    return bits.reshape(bitmasks.shape[0], -1)[:, :width].astype(mx.bool_)


def masked(logits: mx.array, allowed: mx.array) -> mx.array:
    """logits with the disallowed tokens at -inf, in the logits' dtype."""
    return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))
