"""A dense quantized layer at a decode batch's few rows: MLX's quantized matmul as a batch arrives ([rows, 1, in])
against the same with the rows flattened into one product ([rows, in]), on the same inputs, in one process.

    python -m bench dense_rows [--shapes glm-4.7-flash llama-8b --rows 1 2 4 8 16 32 --calls 20 --rounds 3]

Why: MLX's CUDA quantized matmul (as MLX 0.32.2's source reads; 0.32.4 is what runs) takes [rows, 1, in] as `rows`
products of one row each (m = 1, l = rows): from 8 rows on qmm_sm80, grid (1, out / 128, rows) of 16-row tiles, 15
of 16 rows padding; flattened it is one product of `rows` rows. Each layer of a published shape (4-bit affine,
group 64, bfloat16 activations) at each row count: `--calls` calls queued, then evaluated together (the host's
building overlaps the device, as in a decode step), best of `--rounds`, us per call. The calls reuse one layer's
weights, so after the first they read them from L2: a decode step reads each layer's once, from memory. Prints
batched / flattened last (above 1: flattened faster) and the largest difference relative to the largest output.
On an H100 (session 31) GLM-4.7-Flash's layers at 16 rows ran 2.4-4x faster flattened, its output layer 13.7x;
ops_cuda.FLAT_ROWS says what a whole step made of it. (Session 31 also timed the few-pairs experts kernel with the
layer as every row's one expert: 46-73 us and 624 for the output layer, slower than either; commit d64a769 has it.)
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


def ways(x: Any, packed: Any, scales: Any, biases: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The batched and the flattened call on the same inputs: x [rows, 1, in]."""
    import mlx.core as mx

    rows, in_dims = x.shape[0], x.shape[-1]

    def batched() -> Any:
        return mx.quantized_matmul(x, packed, scales, biases, transpose=True, group_size=GROUP, bits=BITS)

    def flat() -> Any:
        return mx.quantized_matmul(x.reshape(rows, in_dims), packed, scales, biases, transpose=True,
                                   group_size=GROUP, bits=BITS).reshape(rows, 1, -1)

    return batched, flat


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--shapes", nargs="+", default=["glm-4.7-flash", "llama-8b"], choices=list(SHAPES))
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    import mlx.core as mx

    lines = []
    for shape in args.shapes:
        for layer, out_dims, in_dims in SHAPES[shape]:
            weight = (mx.random.normal((out_dims, in_dims)) * in_dims**-0.5).astype(mx.bfloat16)
            packed, scales, biases = mx.quantize(weight, GROUP, BITS)
            del weight
            for rows in args.rows:
                x = mx.random.normal((rows, 1, in_dims)).astype(mx.bfloat16)
                mx.eval(packed, scales, biases, x)
                batched, flat = ways(x, packed, scales, biases)
                want = batched().astype(mx.float32)
                error = cast(float, (mx.abs(flat().astype(mx.float32) - want).max()
                                     / mx.maximum(mx.abs(want).max(), 1e-6)).item())
                batched_us, flat_us = (best_us(call, args.calls, args.rounds)[0] for call in (batched, flat))
                lines.append([shape, layer, rows, batched_us, flat_us, batched_us / flat_us, error])
                print(lines[-1], flush=True)
    print(f"\n{mx.default_device()}, 4-bit affine (group {GROUP}), bfloat16 activations, best of {args.rounds} rounds "
          f"of {args.calls} calls (us per call)")
    print(common.table(["shape", "layer", "rows", "[rows,1,in] us", "[rows,in] us", "batched/flattened",
                        "rel. difference"], lines))


if __name__ == "__main__":
    main()
