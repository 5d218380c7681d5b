"""Decode attention (one query per row) over a padded batch, three ways, timed over 32 layers' worth of calls:
MLX's fused kernel with no mask (rows aligned), MLX's with an additive padding mask (rows of different lengths:
MLX's CUDA backend falls back to unfused ops), and mlxd's (models/ops_mlx.py), which then takes grouped-query
attention written as two batched matmuls.

    python bench/masked_decode_attention.py [--batch 16 --keys 384 --heads 32 --kv-heads 8 --head-dim 128]
"""

from __future__ import annotations

import argparse

import mlx.core as mx

from decode_step_profile import timed
from mlxd.models import ops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--keys", type=int, default=384)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    B, T, D = args.batch, args.keys, args.head_dim
    dtype = mx.bfloat16
    qs = [mx.random.normal((B, args.heads, 1, D)).astype(dtype) for _ in range(args.layers)]
    ks = [mx.random.normal((B, args.kv_heads, T, D)).astype(dtype) for _ in range(args.layers)]
    vs = [mx.random.normal((B, args.kv_heads, T, D)).astype(dtype) for _ in range(args.layers)]
    starts = mx.array([(r * T) // (2 * B) for r in range(B)])
    keep = mx.arange(T)[None, :] >= starts[:, None]
    mask = mx.where(keep, mx.array(0, dtype), mx.array(-mx.inf, dtype))[:, None, None, :]
    mx.eval(qs, ks, vs, mask)
    scale = D ** -0.5
    ops.use("mlx")  # what a GPU load chooses

    def fused(m):
        return lambda: [mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=m)
                        for q, k, v in zip(qs, ks, vs)]

    # mlxd's attention: with an array mask and one query per row it takes the grouped matmuls.
    grouped = lambda: [ops.attention(q, k, v, scale, mask) for q, k, v in zip(qs, ks, vs)]  # noqa: E731
    want = mx.fast.scaled_dot_product_attention(qs[0], ks[0], vs[0], scale=scale, mask=mask).astype(mx.float32)
    got = ops.attention(qs[0], ks[0], vs[0], scale, mask).astype(mx.float32)
    print(f"max |grouped - fused with mask| = {mx.abs(want - got).max().item():.2e}")
    rows = [("fused, no mask (aligned rows)", timed(fused(None), args.reps)),
            ("fused, padding mask", timed(fused(mask), args.reps)),
            ("grouped matmuls, padding mask", timed(grouped, args.reps))]
    print(f"batch {B}, {T} keys, {args.heads}/{args.kv_heads} heads, {args.layers} layers per call")
    for label, ms in rows:
        print(f"{label:32s} {ms:7.3f} ms")


if __name__ == "__main__":
    main()
