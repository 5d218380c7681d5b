"""The MLX side of one sequence: chunked prefill, and a decode step queued lazily for pipelining.

Runs only on the worker thread. Nothing here blocks on the device except where a caller reads a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from mlxd.engine.request import TokenLogprob, TopLogprob
from mlxd.generation.sampling import Sampler


@dataclass
class PendingToken:
    """A sampled token still being computed; reading it is the only sync point of a decode step."""

    token: mx.array                      # int32 [1]
    logprob: mx.array | None = None      # float32 [1]
    top_ids: mx.array | None = None      # int32 [k]
    top_logprobs: mx.array | None = None  # float32 [k]

    def read(self) -> tuple[int, TokenLogprob | None]:
        token = int(self.token.item())
        if self.logprob is None:
            return token, None
        top: list[TopLogprob] = []
        if self.top_ids is not None:
            top = [TopLogprob(int(i), float(v))
                   for i, v in zip(self.top_ids.tolist(), self.top_logprobs.tolist())]
        return token, TokenLogprob(token, float(self.logprob.item()), top)


def cache_state(cache: list[Any]) -> list[mx.array]:
    return [a for c in cache for a in c.state]


def prefill_chunk(model: Any, cache: list[Any], ids: list[int]) -> None:
    """Run ids through the model into the cache and evaluate only the cache (no logits are needed)."""
    model(mx.array([ids], dtype=mx.int32), cache=cache)
    mx.eval(cache_state(cache))


def prefill_chunk_with_logprobs(model: Any, cache: list[Any], ids: list[int], targets: list[int],
                                top_k: int) -> list[TokenLogprob]:
    """Like prefill_chunk, but also score targets[i] (the token after ids[i]) for prompt logprobs."""
    logits = model(mx.array([ids], dtype=mx.int32), cache=cache)[0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    chosen = mx.take_along_axis(logprobs, mx.array(targets, dtype=mx.int32)[:, None], axis=-1)[:, 0]
    arrays = [chosen]
    if top_k:
        top_ids = mx.argpartition(-logprobs, kth=top_k - 1, axis=-1)[:, :top_k]
        arrays += [top_ids, mx.take_along_axis(logprobs, top_ids, axis=-1)]
    mx.eval(arrays + cache_state(cache))
    out = []
    for row, (token, value) in enumerate(zip(targets, chosen.tolist())):
        top = []
        if top_k:
            top = sorted((TopLogprob(int(i), float(v)) for i, v in
                          zip(arrays[1][row].tolist(), arrays[2][row].tolist())), key=lambda t: -t.logprob)
        out.append(TokenLogprob(token, float(value), top))
    return out


def queue_decode_step(model: Any, cache: list[Any], sampler: Sampler, inputs: mx.array,
                      want_logprobs: bool, top_k: int) -> PendingToken:
    """Build the graph of one decode step (last position only) and start computing it asynchronously."""
    logits = model(inputs.reshape(1, -1), cache=cache)[:, -1, :]
    token = sampler(logits)
    pending = PendingToken(token)
    if want_logprobs:
        logits = logits[0].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        pending.logprob = logprobs[token]
        if top_k:
            top_ids = mx.argpartition(-logprobs, kth=top_k - 1)[:top_k]
            order = mx.argsort(-logprobs[top_ids])
            pending.top_ids = top_ids[order]
            pending.top_logprobs = logprobs[pending.top_ids]
    arrays = [a for a in (pending.token, pending.logprob, pending.top_ids, pending.top_logprobs) if a is not None]
    mx.async_eval(*arrays)
    return pending
