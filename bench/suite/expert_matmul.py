"""The routed experts' matmul alone: the CUDA backend's two kernels (models/cuda_experts.py, chunked, and
cuda_experts_few.py) against MLX's gathered matmul on the same inputs, in one process, at every size, to choose
`cuda_experts.kernel_for`'s table.

    python -m bench expert_matmul [--tokens 1 4 16 32 64 256 --shapes qwen3-30b-a3b gpt-oss-20b --calls 20]
                                  [--float] [--rows-per-warp 2] [--loads-ahead 2]

A CUDA device only. For each published shape's gate/up and down projections (4-bit affine experts, or gpt-oss's
MXFP4; with `--float` bfloat16 experts, as the unquantized checkpoints hold them) and each token count, `--calls`
calls are queued and evaluated together (so the host's work per call overlaps the device's, as in a decode step)
and the best of `--rounds` is kept, in microseconds per call. Each kernel is timed at every size, whatever the
thresholds say, and checked against MLX's result. Prints MLX / kernel last (above 1: the kernel faster), and the
host's part of each call. `--rows-per-warp 2` times the few-pairs kernel with 2 weight rows a warp instead of 4,
`--loads-ahead 2` with each lane's next load position issued before this one's arithmetic; either also times it
as the module sets it, in the same command, and prints the ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from bench import common

# name -> projections (name, out, in), experts, experts per token, (mode, bits, group size)
SHAPES = {
    "qwen3-30b-a3b": ((("gate_up", 1536, 2048), ("down", 2048, 768)), 128, 8, ("affine", 4, 64)),
    "gpt-oss-20b": ((("gate_up", 5760, 2880), ("down", 2880, 2880)), 32, 4, ("mxfp4", 4, 32)),
    "glm-4.7-flash": ((("gate_up", 3072, 2048), ("down", 2048, 1536)), 64, 4, ("affine", 4, 64)),
}


def best_us(call: Callable[[], object], calls: int, rounds: int) -> tuple[float, float]:
    """The best of `rounds` per call, in us: the whole (building `calls` calls, then evaluating them), and the
    building alone (the host's part: where the whole is no more, the device waited on the host)."""
    import mlx.core as mx

    mx.eval(call())
    best, host = float("inf"), float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        outs = [call() for _ in range(calls)]
        built = time.perf_counter()
        mx.eval(outs)
        best = min(best, (time.perf_counter() - start) / calls)
        host = min(host, (built - start) / calls)
    return best * 1e6, host * 1e6


def compare(x: Any, indices: Any, packed: Any, quant: Any, calls: int, rounds: int,
            variant: dict[str, int]) -> list[float]:
    """us per call of MLX's gathered matmul, the chunked kernel and the few-pairs kernel (with `variant`'s
    cuda_experts_few settings), then the host's part of each; then each kernel's largest error relative to MLX's
    largest output. With a variant, last the few-pairs kernel's us with its own settings, in the same process."""
    import mlx.core as mx

    from mlxd.models import cuda_experts, cuda_experts_few, ops

    def mlx_call() -> mx.array:
        with ops.using("mlx"):
            return ops.gather_matmul(x, indices, packed, quant)

    def kernel_call(few: bool, settings: dict[str, int]) -> Callable[[], mx.array]:
        def call() -> mx.array:
            cuda_experts.FORCE = "few" if few else "chunked"
            saved = {name: getattr(cuda_experts_few, name) for name in settings}
            for name, value in settings.items():
                setattr(cuda_experts_few, name, value)
            try:
                out = cuda_experts.gather_matmul(x, indices, packed, quant)
            finally:
                for name, value in saved.items():
                    setattr(cuda_experts_few, name, value)
            assert out is not None, f"the kernel declined {indices.size} pairs"
            return out
        return call

    want = mlx_call().astype(mx.float32)
    calls_of = [mlx_call, kernel_call(False, {}), kernel_call(True, variant)]
    errors = [cast(float, (mx.abs(f().astype(mx.float32) - want).max() / mx.maximum(mx.abs(want).max(), 1e-6)).item())
              for f in calls_of[1:]]
    timed = [best_us(f, calls, rounds) for f in calls_of]
    own = [best_us(kernel_call(True, {}), calls, rounds)[0]] if variant else []
    return [whole for whole, _ in timed] + [host for _, host in timed] + errors + own


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16, 32, 64, 256])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--float", action="store_true", help="bfloat16 experts instead of the shape's quantization")
    p.add_argument("--rows-per-warp", type=int, default=None,
                   help="the few-pairs kernel's weight rows a warp (cuda_experts_few.ROWS_PER_WARP; default its own)")
    p.add_argument("--loads-ahead", type=int, default=None,
                   help="the few-pairs kernel's loads a lane issues before use (cuda_experts_few.LOADS_AHEAD)")
    args = p.parse_args(argv)

    import mlx.core as mx

    from mlxd.models.base import ExpertQuantization

    # The few-pairs kernel's settings to time beside its own (each call sets them and puts them back).
    variant = {name: value for name, value in (("ROWS_PER_WARP", args.rows_per_warp),
                                               ("LOADS_AHEAD", args.loads_ahead)) if value}
    if not mx.cuda.is_available():
        raise SystemExit("expert_matmul times a CUDA kernel: it needs MLX's CUDA backend")
    lines = []
    for shape in args.shapes:
        projections, experts, top_k, (mode, bits, group) = SHAPES[shape]
        for name, out_dims, in_dims in projections:
            weight = mx.random.normal((experts, out_dims, in_dims)) * in_dims**-0.5
            if args.float:
                packed, quant = weight.astype(mx.bfloat16), None
            else:
                packed, scales, *biases = mx.quantize(weight, group, bits, mode=mode)
                bias = biases[0].astype(mx.bfloat16) if biases else None
                quant = ExpertQuantization(group, bits, mode, scales.astype(mx.bfloat16) if biases else scales, bias)
            for tokens in args.tokens:
                logits = mx.random.normal((tokens, experts))
                indices = mx.argpartition(logits, kth=-top_k, axis=-1)[..., -top_k:].astype(mx.uint32)
                rows = (tokens, top_k, 1, in_dims) if name == "down" else (tokens, 1, 1, in_dims)
                x = mx.random.normal(rows).astype(mx.bfloat16)
                mx.eval(packed, indices, x)

                timings = compare(x, indices, packed, quant, args.calls, args.rounds, variant)
                (mlx_us, chunked_us, few_us), hosts = timings[:3], timings[3:6]
                chunked_error, few_error, own = timings[6], timings[7], timings[8:]
                lines.append([shape, name, tokens, tokens * top_k, mlx_us, chunked_us, few_us, mlx_us / chunked_us,
                              mlx_us / few_us, "/".join(f"{h:.0f}" for h in hosts),
                              max(chunked_error, few_error)] + ([own[0], own[0] / few_us] if own else []))
                print(lines[-1], flush=True)
    print(common.table(["shape", "projection", "tokens", "pairs", "MLX us", "chunked us", "few us",
                        "MLX/chunked", "MLX/few", "host us", "rel. error"]
                       + ["few as set us", "as set/few"] * bool(variant), lines))
    print("host us: building the calls alone (MLX / chunked / few); where it is near the whole, the host decided")
    if variant:
        print(f"few: the few-pairs kernel with {variant}; few as set: with the module's own settings, the same "
              "process (as set/few above 1: the variant faster)")


if __name__ == "__main__":
    main()
