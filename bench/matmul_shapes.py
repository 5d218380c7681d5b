"""Decode-step matmuls of an 8B Llama (fused q/k/v, o, fused gate/up, down) in bf16 on the GPU, for each batch
size M: x @ W.T as nn.Linear computes it, against x @ Wt with the weight stored transposed. Tells what the
matmuls of a batched decode step cost against one row, and whether the weight layout matters.

    python bench/matmul_shapes.py [--batches 1,4,8,16,32 --layers 32 --reps 20]

Per batch size, ms for one step's matmuls (--layers of each shape), best of --reps, and the bandwidth that
reading every weight once would need at that time.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx

# (out, in) of the 8B shape's linear layers after fusion.
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def step_ms(xs: dict[str, mx.array], weights: dict[str, mx.array], layers: int, transposed: bool,
            reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        mx.synchronize()
        start = time.perf_counter()
        outs = []
        for _ in range(layers):
            for name, w in weights.items():
                outs.append(xs[name] @ (w if transposed else w.T))
        mx.eval(outs)
        mx.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    weights = {name: mx.random.normal(shape).astype(mx.bfloat16) * 0.02 for name, shape in SHAPES.items()}
    transposed = {name: mx.contiguous(w.T) for name, w in weights.items()}
    mx.eval(weights, transposed)
    total_bytes = args.layers * sum(w.nbytes for w in weights.values())
    rows = []
    for m in (int(b) for b in args.batches.split(",")):
        xs = {name: mx.random.normal((m, shape[1])).astype(mx.bfloat16) for name, shape in SHAPES.items()}
        mx.eval(xs)
        step_ms(xs, weights, 2, False, 2)  # warm-up: kernels chosen and loaded
        step_ms(xs, transposed, 2, True, 2)
        plain = step_ms(xs, weights, args.layers, False, args.reps)
        flipped = step_ms(xs, transposed, args.layers, True, args.reps)
        rows.append((m, plain, flipped))
        print(f"M={m}: x @ W.T {plain:.2f} ms, x @ Wt {flipped:.2f} ms", flush=True)
    print(f"{args.layers} layers' matmuls, {total_bytes / 2**30:.1f} GiB of weights, best of {args.reps}")
    print(f"{'M':>3} {'W.T ms':>7} {'GB/s':>6} {'Wt ms':>7} {'GB/s':>6} {'Wt/W.T':>7}")
    for m, plain, flipped in rows:
        print(f"{m:>3} {plain:>7.2f} {total_bytes / plain / 1e6:>6.0f} {flipped:>7.2f} "
              f"{total_bytes / flipped / 1e6:>6.0f} {flipped / plain:>7.2f}")


if __name__ == "__main__":
    main()
