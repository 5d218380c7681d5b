"""A dense quantized layer at a decode batch's few rows: MLX's quantized matmul as a batch arrives ([rows, 1, in]),
the same with the rows flattened into one product ([rows, in]), and the CUDA backend's few-pairs kernel with the
layer as every row's one expert (models/cuda_experts.py `dense_matmul`), on the same inputs, in one process.

    python -m bench dense_rows [--shapes glm-4.7-flash llama-8b --rows 1 2 4 8 16 32 --calls 20 --rounds 3]
                               [--rows-per-warp 2]

Why: MLX's CUDA quantized matmul (as MLX 0.32.2's source reads; 0.32.4 is what runs) takes [rows, 1, in] as `rows`
products of one row each from 8 rows on (qmm_sm80, 16-row tiles: 15 of 16 rows padding, the weights read per row;
below 8 rows qmv, per row too), and GLM-4.7-Flash's o_proj took 78 us
at 16 rows on an H100 for 5 MB of 4-bit weights (bench latent_layer_parts, session 30). Each layer of a published
shape (4-bit affine, group 64, bfloat16 activations) at each row count: `--calls` calls queued, then evaluated
together (the host's building overlaps the device, as in a decode step), best of `--rounds`, us per call. Prints
MLX batched / each other way last (above 1: that way faster) and each way's largest error relative to MLX's
largest output. Without CUDA the kernel column is left out (the two MLX layouts still run: a check of the bench).
ops_cuda.DENSE_ROWS and ops_cuda.FLAT_ROWS are set from what this shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from bench import common
from bench.suite.expert_matmul import best_us

# name -> dense layers (name, out, in) of one decoder layer, and the output layer
SHAPES = {
    "glm-4.7-flash": (("q_a+kv_a", 1344, 2048), ("q_b", 5120, 768), ("o_proj", 2048, 5120),
                      ("shared gate_up", 3072, 2048), ("shared down", 2048, 1536), ("lm_head", 154880, 2048)),
    "llama-8b": (("qkv", 6144, 4096), ("o_proj", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336),
                 ("lm_head", 128256, 4096)),
    "llama-1b": (("qkv", 3072, 2048), ("o_proj", 2048, 2048), ("gate_up", 16384, 2048), ("down", 2048, 8192)),
}
GROUP, BITS = 64, 4


def ways(x: Any, packed: Any, scales: Any, biases: Any, kernel: bool,
         rows_per_warp: int | None = None) -> dict[str, Callable[[], Any]]:
    """The calls to compare on the same inputs: x [rows, 1, in]; with `rows_per_warp` the kernel again with that
    many weight rows a warp (cuda_experts_few.ROWS_PER_WARP, set for the call and put back)."""
    import mlx.core as mx

    from mlxd.models import cuda_experts, cuda_experts_few
    from mlxd.models.base import ExpertQuantization

    rows, in_dims = x.shape[0], x.shape[-1]

    def batched() -> Any:
        return mx.quantized_matmul(x, packed, scales, biases, transpose=True, group_size=GROUP, bits=BITS)

    def flat() -> Any:
        return mx.quantized_matmul(x.reshape(rows, in_dims), packed, scales, biases, transpose=True,
                                   group_size=GROUP, bits=BITS).reshape(rows, 1, -1)

    found: dict[str, Callable[[], Any]] = {"MLX [rows,1,in]": batched, "MLX [rows,in]": flat}
    if kernel:
        quant = ExpertQuantization(GROUP, BITS, "affine", scales, biases)

        def few(rw: int | None = None) -> Any:
            saved = cuda_experts_few.ROWS_PER_WARP
            cuda_experts_few.ROWS_PER_WARP = rw or saved
            try:
                out = cuda_experts.dense_matmul(x, packed, quant)
            finally:
                cuda_experts_few.ROWS_PER_WARP = saved
            assert out is not None, f"the kernel declined {rows} rows of {in_dims}"
            return out

        found["kernel"] = few
        if rows_per_warp:
            found[f"kernel rw{rows_per_warp}"] = lambda: few(rows_per_warp)
    return found


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--shapes", nargs="+", default=["glm-4.7-flash", "llama-8b"], choices=list(SHAPES))
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows-per-warp", type=int, default=None,
                   help="also the kernel with this many weight rows a warp (cuda_experts_few.ROWS_PER_WARP, 4: a "
                        "2,048-wide layer is 64 blocks; at 2, 128)")
    args = p.parse_args(argv)

    import mlx.core as mx

    kernel = mx.cuda.is_available()
    names: list[str] = []
    lines = []
    for shape in args.shapes:
        for layer, out_dims, in_dims in SHAPES[shape]:
            weight = (mx.random.normal((out_dims, in_dims)) * in_dims**-0.5).astype(mx.bfloat16)
            packed, scales, biases = mx.quantize(weight, GROUP, BITS)
            del weight
            for rows in args.rows:
                x = mx.random.normal((rows, 1, in_dims)).astype(mx.bfloat16)
                mx.eval(packed, scales, biases, x)
                calls = ways(x, packed, scales, biases, kernel, args.rows_per_warp)
                names = list(calls)
                want = calls[names[0]]().astype(mx.float32)
                scale = mx.maximum(mx.abs(want).max(), 1e-6)
                errors = [cast(float, (mx.abs(call().astype(mx.float32) - want).max() / scale).item())
                          for call in list(calls.values())[1:]]
                us = [best_us(call, args.calls, args.rounds)[0] for call in calls.values()]
                lines.append([shape, layer, rows, *us, *(us[0] / u for u in us[1:]), max(errors)])
                print(lines[-1], flush=True)
    print(f"\n{mx.default_device()}, 4-bit affine (group {GROUP}), bfloat16 activations, best of {args.rounds} rounds "
          f"of {args.calls} calls (us per call)")
    print(common.table(["shape", "layer", "rows", *(f"{n} us" for n in names),
                        *(f"batched/{n.split()[-1]}" for n in names[1:]), "rel. error"], lines))


if __name__ == "__main__":
    main()
