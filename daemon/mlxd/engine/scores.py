"""The target model's logprobs of the tokens a decode or verify step chose, as the runner reports them."""

from __future__ import annotations

from typing import cast

import mlx.core as mx

from mlxd.engine.request import TokenLogprob, TopLogprob
from mlxd.generation.sampling import logprobs, top_logprobs


def row_logprobs(logits: mx.array, token: mx.array, top_k: int) -> tuple[mx.array, ...]:
    scores = logprobs(logits)
    chosen = scores[token]
    return (chosen, *top_logprobs(scores, top_k)) if top_k else (chosen,)


def run_logprobs(logits: mx.array, run: list[int], top_k: int) -> list[TokenLogprob]:
    """The target's logprobs of a verify step's accepted run (logits [n, vocab] at its positions)."""
    arrays = [row_logprobs(logits[j], mx.array(token, dtype=mx.int32), top_k) for j, token in enumerate(run)]
    mx.eval([a for row in arrays for a in row])
    return [token_logprob(token, row) for token, row in zip(run, arrays)]


def token_logprob(token: int, arrays: tuple[mx.array, ...]) -> TokenLogprob:
    # (chosen float32 [], top ids int32 [k], their float32 values [k]): MLX's stub types tolist() as any nesting
    # of any scalar, complex included.
    top = tops(cast(list[int], arrays[1].tolist()), cast(list[float], arrays[2].tolist())) if len(arrays) == 3 else []
    return TokenLogprob(token, float(arrays[0]), top)


def tops(ids: list[int], values: list[float]) -> list[TopLogprob]:
    """The top alternatives, best first, without those of probability 0: a constraint's disallowed tokens have no
    logprob (the protocol's word), so a row that allows fewer tokens than were asked for lists fewer. Listed at
    -inf, their order among themselves was whatever the top-k kernel left (a batched row's differed from the same
    row's alone: tests/engine/scenarios.py found it)."""
    return [TopLogprob(int(i), float(v)) for i, v in zip(ids, values) if v != float("-inf")]

