"""Prompt logprobs on the CPU: a prefill that scores every prompt token, with the log-softmax and top-k in NumPy
(cpu_kernels.scores) against MLX's ops, alternating in one process, OpenBLAS preloaded as `mlxd serve` does.

    python bench/cpu_prompt_logprobs.py --model PATH.gguf [--tokens 512 --top 0,5 --rounds 3 --threads 1]

Prints seconds per prefill of --tokens tokens (one chunk) with prompt logprobs, the best of --rounds, and the
largest difference between the two variants' values.
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
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--top", default="0,5")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    preload_blas(args.threads)

    import mlx.core as mx
    from mlxd.engine.decoder import prefill_chunk_with_logprobs
    from mlxd.loading.model_source import load_model_and_tokenizer
    from mlxd.models import cpu_kernels

    mx.set_default_device(mx.cpu)
    model = load_model_and_tokenizer(args.model)[0].model
    ids = [(i * 104729) % 30000 + 100 for i in range(args.tokens + 1)]
    numpy_rule = cpu_kernels.scores_apply
    variants = {"numpy": numpy_rule, "mlx": lambda logits: False}

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
            for name, rule in (variants.items() if r % 2 == 0 else reversed(variants.items())):
                cpu_kernels.scores_apply = rule
                seconds, values[name] = run(top_k)
                best[(top_k, name)] = min(best.get((top_k, name), seconds), seconds)
                print(f"round {r + 1} top {top_k} {name}: {seconds:.2f} s", flush=True)
            pairs = [(a.logprob, b.logprob) for a, b in zip(values["numpy"], values["mlx"])]
            pairs += [(x.logprob, y.logprob) for a, b in zip(values["numpy"], values["mlx"])
                      for x, y in zip(a.top, b.top)]
            differs[top_k] = max(differs.get(top_k, 0.0), max(abs(x - y) for x, y in pairs))
    cpu_kernels.scores_apply = numpy_rule
    print(f"{args.model.name}, {args.tokens} tokens scored, {args.threads} BLAS thread(s), best of {args.rounds}")
    print(f"{'top':>4} {'mlx s':>7} {'numpy s':>8} {'mlx/numpy':>10} {'max |diff|':>11}")
    for top_k in differs:
        m, n = best[(top_k, "mlx")], best[(top_k, "numpy")]
        print(f"{top_k:>4} {m:>7.2f} {n:>8.2f} {m / n:>10.2f} {differs[top_k]:>11.2e}")


if __name__ == "__main__":
    main()
