"""The batched decode loop alone, mlxd's model and batch cache against mlx-lm's model and BatchKVCache, on the
same weights and the same rows, pipelined like a generation loop (step n+1 queued before step n is read).
Tells whether a throughput gap between the engines lies in the forward pass or around it. mlx-lm must be
installed (the GPU machine, the bench venv); it is only the anchor.

    python bench/batch_step_compare.py --model PATH [--batch 16 --context 128 --steps 64 --rounds 3]

"mixed" rows have lengths spread over [context / 2, 3 * context / 2) (a padding mask and per-row positions);
"aligned" rows all have `context` tokens. Prints ms per step, a table last.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache as LmBatchCache
from mlx_lm.utils import load_model as lm_load_model

from mlxd.engine.batch import DecodeBatch
from mlxd.loading.loader import load_model
from mlxd.models.batch_cache import BatchKVCache, BatchPositions
from mlxd.models.cache import KVCache


def lengths_for(kind: str, batch: int, context: int) -> list[int]:
    return [context // 2 + (r * context) // batch if kind == "mixed" else context for r in range(batch)]


def pipelined_ms(step: Callable[[mx.array], mx.array], first: mx.array, steps: int) -> float:
    """ms per step of `steps` steps, each queued before the previous one's tokens are read."""
    y = step(first)
    mx.async_eval(y)
    start = time.perf_counter()
    for _ in range(steps):
        following = step(y)
        mx.async_eval(following)
        mx.eval(y)
        y.tolist()
        y = following
    mx.eval(y)
    return (time.perf_counter() - start) / steps * 1e3


def mlx_lm_ms(model, lengths: list[int], steps: int) -> float:
    """mlx-lm: one left-padded batched prefill (as BatchGenerator does), then the decode loop."""
    width = max(lengths)
    padding = [width - n for n in lengths]
    prompt = mx.array([[0] * p + [(7 * r + i) % 1000 + 5 for i in range(n)]
                       for r, (p, n) in enumerate(zip(padding, lengths))], dtype=mx.int32)
    caches = [LmBatchCache(padding) for _ in model.layers]
    logits = model(prompt, cache=caches)[:, -1, :]
    first = mx.argmax(logits, axis=-1)
    mx.eval(first, [c.state for c in caches])

    def step(tokens: mx.array) -> mx.array:
        return mx.argmax(model(tokens[:, None], cache=caches)[:, -1, :], axis=-1)

    return pipelined_ms(step, first, steps)


def mlxd_ms(model, lengths: list[int], steps: int) -> float:
    """mlxd: rows added to the right-aligned batch cache as the engine adds them after their own prefill."""
    positions = BatchPositions()
    caches = [BatchKVCache(positions, None) for _ in model.make_cache()]
    dtype = model.model.norm.weight.dtype
    for cache in caches:
        for n in lengths:
            own = KVCache()
            keys = mx.random.normal((1, model.args.num_key_value_heads, n, model.args.head_dim)).astype(dtype)
            own.update_and_fetch(keys, keys)
            cache.add_row(own)
    positions.set(list(lengths))
    mx.eval([c.state for c in caches])

    def step(tokens: mx.array) -> mx.array:
        out = mx.argmax(model(tokens[:, None], cache=caches)[:, -1, :], axis=-1)
        positions.advance()
        return out

    return pipelined_ms(step, mx.zeros((len(lengths),), dtype=mx.int32), steps)


class _Row:
    """The least a DecodeBatch row needs: a prefilled cache, greedy sampling, no stops."""

    def __init__(self, cache: list, length: int) -> None:
        self._cache, self.position, self.last_prompt_token, self.queued = cache, length, 5, 0
        self.sampler = type("Greedy", (), {"plain_greedy": True})()
        self.request = type("Request", (), {"logprobs": False})()
        self.accepted = 0

    def ready_for_step(self) -> bool:
        return True

    def take_cache(self) -> list:
        return self._cache

    def accept(self, token: int, logprob) -> None:
        self.accepted += 1


def mlxd_batch_ms(model, lengths: list[int], steps: int) -> float:
    """mlxd's DecodeBatch (the engine's decode loop, rows joining as after their prefill), without the rest
    of the engine: the same rows as mlxd_ms, stepped by DecodeBatch.step()."""
    dtype = model.model.norm.weight.dtype
    batch = DecodeBatch(model)
    for n in lengths:
        cache = model.make_cache()
        for c in cache:
            keys = mx.random.normal((1, model.args.num_key_value_heads, n, model.args.head_dim)).astype(dtype)
            c.update_and_fetch(keys, keys)
        batch.join(_Row(cache, n))
    batch.step()
    batch.step()
    mx.eval([c.state for c in batch._caches])
    start = time.perf_counter()
    for _ in range(steps):
        batch.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="mixed,aligned")
    args = parser.parse_args()
    ours = load_model(args.model, dtype="auto", fuse=True).model  # as `mlxd serve` loads it
    theirs, _ = lm_load_model(args.model)
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for kind in args.kinds.split(","):
            lengths = lengths_for(kind, args.batch, args.context)
            for engine, fn, model in (("mlxd", mlxd_ms, ours), ("mlxd batch", mlxd_batch_ms, ours),
                                      ("mlx-lm", mlx_lm_ms, theirs)):
                ms = fn(model, lengths, args.steps)
                results.setdefault((kind, engine), []).append(ms)
                print(f"{kind} {engine}: {ms:.2f} ms/step", flush=True)
    print(f"batch {args.batch}, context {args.context}, {args.steps} pipelined steps, best of {args.rounds}")
    print(f"{'rows':>8} {'mlxd ms':>8} {'DecodeBatch ms':>15} {'mlx-lm ms':>10} {'mlxd/mlx-lm time':>17}")
    for kind in args.kinds.split(","):
        a, c, b = (min(results[(kind, e)]) for e in ("mlxd", "mlxd batch", "mlx-lm"))
        print(f"{kind:>8} {a:8.2f} {c:15.2f} {b:10.2f} {a / b:17.3f}")


if __name__ == "__main__":
    main()
