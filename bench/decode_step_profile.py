"""Where a batched decode step's time goes: the whole step of the engine's model at batch sizes 1..16,
against the bare matmuls of the same weights at those batch sizes (one eval per step, so kernel time plus
launch overhead, no pipelining).

    python bench/decode_step_profile.py --model PATH [--batches 1,4,16 --context 128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mlxd.loading.loader import load_model
from mlxd.models.batch_cache import BatchKVCache, BatchPositions
from mlxd.models.cache import KVCache


def timed(fn, reps: int = 20) -> float:
    for _ in range(3):
        mx.eval(fn())
    start = time.perf_counter()
    for _ in range(reps):
        mx.eval(fn())
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--scenarios", default="aligned",
                        help="comma list: aligned (one position, no mask), offsets (rows at different positions: "
                             "array rope offsets), mask (rows of different lengths: padding mask), both")
    args = parser.parse_args()
    model = load_model(args.model, dtype="auto").model
    linears = [m for _, m in model.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    print(f"{'scenario':>8} {'batch':>5} {'step ms':>8} {'matmuls ms':>11} {'per token ms':>13}")
    for scenario, b in [(s, int(x)) for s in args.scenarios.split(",") for x in args.batches.split(",")]:
        dtype = model.model.norm.weight.dtype
        positions = BatchPositions()
        caches = [BatchKVCache(positions, None) for _ in model.make_cache()]
        for cache in caches:
            for r in range(b):
                own = KVCache()
                length = args.context - (r if scenario in ("mask", "both") else 0)
                k = mx.zeros((1, model.args.num_key_value_heads, length, model.args.head_dim), dtype)
                own.update_and_fetch(k, k)
                cache.add_row(own)
        positions.set([args.context + (r if scenario in ("offsets", "both") else 0) for r in range(b)])
        tokens = mx.zeros((b, 1), dtype=mx.int32)

        def step():
            out = mx.argmax(model(tokens, cache=caches)[:, -1, :], axis=-1)
            for c in caches:  # stay at the same length: time one step at this context
                c.end -= 1
            return out

        dtype = model.model.norm.weight.dtype
        x = [mx.zeros((b, m.weight.shape[-1] * (32 // m.bits if hasattr(m, "bits") else 1)), dtype)
             for m in linears]
        step_ms = timed(step)
        mat_ms = timed(lambda: [m(v) for m, v in zip(linears, x)])
        print(f"{scenario:>8} {b:5d} {step_ms:8.2f} {mat_ms:11.2f} {step_ms / b:13.3f}", flush=True)


if __name__ == "__main__":
    main()
