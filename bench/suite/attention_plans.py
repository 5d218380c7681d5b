"""What a new attention shape costs on CUDA: MLX's fused attention (cuDNN for more than one query) builds a plan for
each new (rows, queries, keys) shape, and the first call of each pays for it. A prefill chunk, a draft model's
catch-up pass or a verify step each meet new key lengths as contexts grow.

    python -m bench attention_plans [--heads 32 --kv-heads 8 --dims 128] [--shapes 1x64x64,16x64x80,...]

For each shape (rows x queries x keys, an array mask as mlxd's batches pass) times the first call and the median of
later calls, of MLX's fused kernel and of the explicit ops (models/ops_mlx.py grouped_attention), in bfloat16.
"""

from __future__ import annotations

import statistics
import time

import mlx.core as mx

from bench import common
from mlxd.models.ops_mlx import grouped_attention

SHAPES = ("1x64x64,1x64x100,1x64x140,16x64x64,16x64x100,16x64x140,16x128x200,"
          "1x512x512,1x512x700,1x512x900,1x2048x2048")


def _timed(fn) -> float:
    start = time.perf_counter()
    mx.eval(fn())
    return (time.perf_counter() - start) * 1e3


def one_shape(rows: int, queries: int, keys: int, heads: int, kv_heads: int, dims: int) -> list[str | float]:
    q = mx.random.normal((rows, heads, queries, dims)).astype(mx.bfloat16)
    k = mx.random.normal((rows, kv_heads, keys, dims)).astype(mx.bfloat16)
    v = mx.random.normal((rows, kv_heads, keys, dims)).astype(mx.bfloat16)
    causal = mx.arange(keys)[None] <= (keys - queries + mx.arange(queries))[:, None]
    mask = mx.broadcast_to(causal, (rows, 1, queries, keys))
    mx.eval(q, k, v, mask)
    scale = dims ** -0.5
    fused = lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)  # noqa: E731
    ops = lambda: grouped_attention(q, k, v, scale, mask)  # noqa: E731
    out: list[str | float] = [f"{rows}x{queries}x{keys}"]
    for fn in (fused, ops):
        first = _timed(fn)
        later = statistics.median(_timed(fn) for _ in range(5))
        out += [round(first, 2), round(later, 3)]
    return out


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--dims", type=int, default=128)
    p.add_argument("--shapes", default=SHAPES, help="comma-separated ROWSxQUERIESxKEYS (default: %(default)s)")
    args = p.parse_args(argv)
    mx.eval(mx.zeros(1) + 1)
    shapes = [[int(n) for n in shape.split("x")] for shape in args.shapes.split(",")]
    lines = [one_shape(rows, queries, keys, args.heads, args.kv_heads, args.dims) for rows, queries, keys in shapes]
    print(f"\nattention on {mx.default_device()}, {args.heads} heads ({args.kv_heads} kv) of {args.dims}, bfloat16, "
          "an array mask; ms")
    print(common.table(["rows x queries x keys", "fused first", "fused later", "ops first", "ops later"], lines))


if __name__ == "__main__":
    main()
