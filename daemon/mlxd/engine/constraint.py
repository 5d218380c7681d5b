"""What the runner needs of a row's token constraint (a grammar: JSON Schema, regex, Lark, GBNF).

The constraint lives on the CPU (llguidance's matcher, constraints/matcher.py RowConstraint); each decode step it
fills a bitmask of the tokens it allows next (bit t of word t // 32 set: token t allowed), and it is told each
token the row generated. The runner turns the constrained rows' bitmasks into a boolean mask on the device and
sets the logits of disallowed tokens to -inf before sampling, so every sampling setting (temperature, top-k/p,
penalties, logit bias, seeds) and the logprobs act on the constrained distribution.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class TokenConstraint(Protocol):
    # int32 words of the mask row it fills: at least the logits width's (ids past the logits are never allowed),
    # more where its tokenizer is wider than the logits.
    mask_words: int

    def fill_bitmask(self, out: np.ndarray) -> None:
        """Write the allowed next tokens into `out`, an int32 row of `mask_words` words."""

    def consume(self, token: int) -> None:
        """The token the row generated (always one the last mask allowed)."""

    def is_stopped(self) -> bool:
        """The constraint is complete: nothing may follow (the sequence ends with STOP)."""

    def rollback(self, tokens: int) -> None:
        """Forget the last `tokens` consumed ones (a verify step's masks follow a row's drafts, then undo them)."""
