"""Prompt logprobs on the CPU: a prefill that scores every prompt token, with the NumPy backend (log-softmax and
top-k in NumPy, models/ops_cpu_numpy.py) against the MLX one (ops_mlx.py), alternating the backends (models/ops.py
`use`) in one process, OpenBLAS preloaded as `mlxd serve` does. The NumPy backend also runs the prefill's
attention and activations in NumPy, as served.

    python bench/cpu_prompt_logprobs.py --model PATH.gguf [--kernels numpy,mlx --tokens 512 --top 0,5 --rounds 3]

Prints seconds per prefill of --tokens tokens (one chunk) with prompt logprobs, the best of --rounds, and (when
both backends ran) the largest difference between their values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_prefill_kernels import preload_blas  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--kernels", default="numpy,mlx", help="backends of models/ops.py to alternate")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--top", default="0,5")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    preload_blas(args.threads)

    import mlx.core as mx
    from mlxd.engine.decoder import prefill_chunk_with_logprobs
    from mlxd.loading.model_source import load_model_and_tokenizer
    from mlxd.models import ops

    mx.set_default_device(mx.cpu)
    model = load_model_and_tokenizer(args.model)[0].model
    ids = [(i * 104729) % 30000 + 100 for i in range(args.tokens + 1)]
    kernels = args.kernels.split(",")

    def run(top_k: int) -> tuple[float, list]:
        cache = model.make_cache()
        start = time.perf_counter()
        scored = prefill_chunk_with_logprobs(model, cache, ids[:-1], ids[1:], top_k)
        return time.perf_counter() - start, scored

    run(0)  # warm-up
    best: dict[tuple[int, str], float] = {}
    differs: dict[int, float] = {}
    for r in range(args.rounds):
        for top_k in (int(k) for k in args.top.split(",")):
            values = {}
            for name in (kernels if r % 2 == 0 else reversed(kernels)):
                ops.use(name)
                seconds, values[name] = run(top_k)
                best[(top_k, name)] = min(best.get((top_k, name), seconds), seconds)
                print(f"round {r + 1} top {top_k} {name}: {seconds:.2f} s", flush=True)
            if {"numpy", "mlx"} <= values.keys():
                pairs = [(a.logprob, b.logprob) for a, b in zip(values["numpy"], values["mlx"])]
                pairs += [(x.logprob, y.logprob) for a, b in zip(values["numpy"], values["mlx"])
                          for x, y in zip(a.top, b.top)]
                differs[top_k] = max(differs.get(top_k, 0.0), max(abs(x - y) for x, y in pairs))
    print(f"{args.model.name}, {args.tokens} tokens scored, {args.threads} BLAS thread(s), best of {args.rounds}")
    print(f"{'top':>4}" + "".join(f" {name + ' s':>8}" for name in kernels)
          + (f" {'mlx/numpy':>10} {'max |diff|':>11}" if differs else ""))
    for top_k in sorted({k for k, _ in best}):
        compared = f" {best[(top_k, 'mlx')] / best[(top_k, 'numpy')]:>10.2f} {differs[top_k]:>11.2e}" if differs else ""
        print(f"{top_k:>4}" + "".join(f" {best[(top_k, name)]:>8.2f}" for name in kernels) + compared)


if __name__ == "__main__":
    main()
