"""The MLX side of one sequence: chunked prefill, and a decode step queued lazily for pipelining.

Runs only on the worker thread. Nothing here blocks on the device except where a caller reads a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import mlx.core as mx

from mlxd.engine.request import TokenLogprob, TopLogprob
from mlxd.generation.sampling import Sampler, logprobs, top_logprobs


@dataclass
class PendingToken:
    """A sampled token still being computed; reading it is the only sync point of a decode step."""

    token: mx.array                       # int32 [1]
    logprob: mx.array | None = None       # float32 [1]
    top_ids: mx.array | None = None       # int32 [k]
    top_values: mx.array | None = None    # float32 [k]

    def arrays(self) -> list[mx.array]:
        return [a for a in (self.token, self.logprob, self.top_ids, self.top_values) if a is not None]

    def read(self) -> tuple[int, TokenLogprob | None]:
        token = int(self.token.item())
        if self.logprob is None:
            return token, None
        top = [] if self.top_ids is None else _tops(self.top_ids.tolist(), self.top_values.tolist())
        return token, TokenLogprob(token, float(self.logprob.item()), top)


def _tops(ids: list[int], values: list[float]) -> list[TopLogprob]:
    return [TopLogprob(int(i), float(v)) for i, v in zip(ids, values)]


def cache_state(cache: list[Any]) -> list[mx.array]:
    return [a for c in cache for a in c.state]


def _forward(model: Any, cache: list[Any], ids: list[int], images: Sequence[tuple[int, mx.array]]) -> mx.array:
    inputs = mx.array([ids], dtype=mx.int32)
    # Only vision-language models take images; text models keep their plain signature.
    return model(inputs, cache=cache, images=images) if images else model(inputs, cache=cache)


def prefill_chunk(model: Any, cache: list[Any], ids: list[int], images: Sequence[tuple[int, mx.array]] = ()) -> None:
    """Run ids through the model into the cache and evaluate only the cache (no logits are needed).
    `images` holds (position in the chunk, embeddings) of each image whose tokens lie in the chunk."""
    _forward(model, cache, ids, images)
    mx.eval(cache_state(cache))


def prefill_chunk_with_logprobs(model: Any, cache: list[Any], ids: list[int], targets: list[int],
                                top_k: int, images: Sequence[tuple[int, mx.array]] = ()) -> list[TokenLogprob]:
    """Like prefill_chunk, but also score targets[i] (the token after ids[i]) for prompt logprobs."""
    scores = logprobs(_forward(model, cache, ids, images)[0])
    chosen = mx.take_along_axis(scores, mx.array(targets, dtype=mx.int32)[:, None], axis=-1)[:, 0]
    tops = top_logprobs(scores, top_k) if top_k else None
    mx.eval([chosen, *(tops or ())] + cache_state(cache))
    rows = zip(targets, chosen.tolist(), *(t.tolist() for t in tops) if tops else ([[]] * len(targets),) * 2)
    return [TokenLogprob(token, value, _tops(top_ids, top_values)) for token, value, top_ids, top_values in rows]


def queue_decode_step(model: Any, cache: list[Any], sampler: Sampler, inputs: mx.array,
                      want_logprobs: bool, top_k: int) -> PendingToken:
    """Build the graph of one decode step (last position only) and start computing it asynchronously."""
    logits = model(inputs.reshape(1, -1), cache=cache)[:, -1, :]
    pending = PendingToken(sampler(logits))
    if want_logprobs:
        scores = logprobs(logits[0])
        pending.logprob = scores[pending.token]
        if top_k:
            pending.top_ids, pending.top_values = top_logprobs(scores, top_k)
    mx.async_eval(*pending.arrays())
    return pending
