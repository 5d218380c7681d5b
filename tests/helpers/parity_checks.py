"""Checks shared by the parity tests of model folders (tests/models) and of GGUF files (tests/gguf)."""

from __future__ import annotations

import mlx.core as mx


def greedy_with_cache(model, input_ids: mx.array, count: int) -> list[int]:
    """`count` greedy tokens after input_ids [1, T], decoding one token at a time through the KV cache."""
    cache = model.make_cache()
    token = model(input_ids, cache)[:, -1].argmax(axis=-1)
    got = [token.item()]
    while len(got) < count:
        token = model(token[:, None], cache)[:, -1].argmax(axis=-1)
        got.append(token.item())
    return got


def prefill_in_chunks(model, tokens: mx.array, chunk: int) -> tuple[mx.array, list]:
    """The logits of tokens [1, T] computed `chunk` tokens at a time through a fresh cache, and that cache."""
    cache = model.make_cache()
    pieces = []
    for start in range(0, tokens.shape[1], chunk):
        pieces.append(model(tokens[:, start : start + chunk], cache))
        mx.eval(pieces[-1], [c.state for c in cache])
    return mx.concatenate(pieces, axis=1), cache


def max_decode_error(model, tokens: mx.array, continuation: mx.array) -> float:
    """The largest difference between the logits of each token of `continuation` decoded one at a time through the
    cache (after tokens [1, T] prefilled in chunks of 16) and those of a full forward pass over the sequence so far."""
    sequence = mx.concatenate([tokens, continuation[None, :]], axis=1)
    _, cache = prefill_in_chunks(model, tokens, 16)
    worst = 0.0
    for pos in range(tokens.shape[1], sequence.shape[1]):
        step = model(sequence[:, pos : pos + 1], cache)[0, -1]
        full = model(sequence[:, : pos + 1])[0, -1]
        worst = max(worst, mx.abs(step - full).max().item())
    return worst
