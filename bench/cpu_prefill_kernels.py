"""CPU prefill with mlxd's NumPy kernels (daemon/mlxd/models/ops_cpu_numpy.py: attention, gated MLP activation)
against MLX's own ops (ops_mlx.py), on one loaded model (fused, as `mlxd serve` loads it), alternating the
backends (models/ops.py `use`) in one process. OpenBLAS is preloaded as `mlxd serve` preloads it (the script
re-executes itself once).

    python bench/cpu_prefill_kernels.py --model PATH.gguf [--kernels numpy,mlx --tokens 512,2000 --rounds 3]

Prefill runs in chunks of --chunk tokens (the daemon's --prefill-chunk) through mlxd's prefill_chunk; the table
printed last has the best of --rounds per backend, and their ratio when both ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "daemon"))


def preload_blas(threads: int) -> None:
    """Exec this script again with OpenBLAS preloaded and `threads` BLAS threads (NumPy's and MLX's), in the
    environment bench/cpu_anchors.py gives its engines."""
    if os.environ.get("BENCH_BLAS_DONE"):
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from cpu_anchors import blas_env
    env = dict(blas_env(threads), BENCH_BLAS_DONE="1")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def prefill_seconds(model, n_tokens: int, chunk: int, seed: int) -> float:
    import mlx.core as mx
    from mlxd.engine.decoder import prefill_chunk
    ids = [(seed * 7919 + i * 104729) % 30000 + 100 for i in range(n_tokens)]
    cache = model.make_cache()
    start = time.perf_counter()
    for i in range(0, n_tokens, chunk):
        prefill_chunk(model, cache, ids[i:i + chunk])
    mx.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--kernels", default="numpy,mlx", help="backends of models/ops.py to alternate")
    parser.add_argument("--tokens", default="512,2000")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    preload_blas(args.threads)

    import mlx.core as mx
    from mlxd.loading.model_source import load_model_and_tokenizer
    from mlxd.models import ops

    mx.set_default_device(mx.cpu)
    model = load_model_and_tokenizer(args.model)[0].model
    kernels = args.kernels.split(",")
    lengths = [int(x) for x in args.tokens.split(",")]
    prefill_seconds(model, 64, args.chunk, seed=0)  # warm-up
    best: dict[tuple[int, str], float] = {}
    for r in range(args.rounds):
        for n in lengths:
            for name in (kernels if r % 2 == 0 else reversed(kernels)):
                ops.use(name)
                s = prefill_seconds(model, n, args.chunk, seed=r * 10 + n)
                best[(n, name)] = min(best.get((n, name), s), s)
                print(f"round {r + 1} {n} tokens {name}: {s:.2f} s ({n / s:.1f} tok/s)", flush=True)
    print(f"{args.model.name}, chunk {args.chunk}, {args.threads} BLAS thread(s), best of {args.rounds}")
    both = {"numpy", "mlx"} <= set(kernels)
    print(f"{'tokens':>6}" + "".join(f" {name + ' tok/s':>12}" for name in kernels)
          + (f" {'numpy/mlx':>10}" if both else ""))
    for n in lengths:
        rates = {name: n / best[(n, name)] for name in kernels}
        ratio = f" {rates['numpy'] / rates['mlx']:>10.2f}" if both else ""
        print(f"{n:>6}" + "".join(f" {rates[name]:>12.1f}" for name in kernels) + ratio)


if __name__ == "__main__":
    main()
