"""The MLX side of one sequence: chunked prefill, and a decode step queued lazily for pipelining.

Runs only on the worker thread. Nothing here blocks on the device except where a caller reads a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import mlx.core as mx

from mlxd.engine.request import TokenLogprob, TopLogprob
from mlxd.generation.sampling import logprobs, top_logprobs
from mlxd.models import ops


@dataclass
class PendingBatch:
    """The tokens of one batched decode step, still being computed; reading them is the step's only sync."""

    rows: list[Any]                          # the sequences, in row order
    tokens: mx.array                         # int32 [B]
    logprobs: list[tuple[mx.array, ...] | None]  # per row: (chosen,) or (chosen, top ids, top values)

    def read(self) -> list[tuple[int, TokenLogprob | None]]:
        # mx.eval waits without the GIL (tolist would hold it), so the gRPC threads stream meanwhile.
        mx.eval(self.tokens, *[a for arrays in self.logprobs if arrays for a in arrays])
        tokens = self.tokens.tolist()
        return [(token, None if lp is None else _token_logprob(token, lp)) for token, lp in zip(tokens, self.logprobs)]


def _token_logprob(token: int, arrays: tuple[mx.array, ...]) -> TokenLogprob:
    top = _tops(arrays[1].tolist(), arrays[2].tolist()) if len(arrays) == 3 else []
    return TokenLogprob(token, float(arrays[0].item()), top)


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
    logits = _forward(model, cache, ids, images)[0]
    rows = zip(targets, *ops.prompt_scores(logits, targets, top_k))
    mx.eval(cache_state(cache))  # mostly computed with the logits already
    return [TokenLogprob(token, value, _tops(top_ids, top_values)) for token, value, top_ids, top_values in rows]


def queue_batch_step(model: Any, cache: list[Any], rows: list[Any], inputs: mx.array) -> PendingBatch:
    """Build the graph of one decode step for every row (inputs int32 [B]) and start computing it.
    Each row samples with its own sampler; rows that are plainly greedy share one argmax."""
    logits = model(inputs.reshape(-1, 1), cache=cache)[:, -1, :]
    plain = [seq.sampler.plain_greedy for seq in rows]
    argmax = mx.argmax(logits, axis=-1).astype(mx.int32) if any(plain) else None
    if all(plain):
        tokens = argmax
    else:
        tokens = mx.concatenate([argmax[r:r + 1] if plain[r] else seq.sampler(logits[r])
                                 for r, seq in enumerate(rows)])
    scored = [_row_logprobs(logits[r], tokens[r], seq.request.top_logprobs) if seq.request.logprobs else None
              for r, seq in enumerate(rows)]
    mx.async_eval(tokens, *[a for arrays in scored if arrays for a in arrays])
    return PendingBatch(list(rows), tokens, scored)


def _row_logprobs(logits: mx.array, token: mx.array, top_k: int) -> tuple[mx.array, ...]:
    scores = logprobs(logits)
    chosen = scores[token]
    return (chosen, *top_logprobs(scores, top_k)) if top_k else (chosen,)
