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
