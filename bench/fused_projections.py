"""Fused input projections (one matmul for q/k/v, one for gate/up, as `mlxd serve` loads a model) against the
separate ones of the model as stored: mlxd's pipelined decode loop (bench/batch_step_compare.py's) on the same
weights loaded both ways (load_model's `fuse`), alternating, in one process.

    python bench/fused_projections.py --model PATH [--batches 1,16 --context 128 --steps 64 --rounds 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from batch_step_compare import lengths_for, mlxd_ms
from mlxd.loading.loader import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models = {"separate": load_model(args.model, dtype="auto").model,
              "fused": load_model(args.model, dtype="auto", fuse=True).model}
    batches = [int(x) for x in args.batches.split(",")]
    results: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for b in batches:
            for variant, model in models.items():
                ms = mlxd_ms(model, lengths_for("mixed", b, args.context), args.steps)
                results.setdefault((b, variant), []).append(ms)
                print(f"batch {b} {variant}: {ms:.2f} ms/step", flush=True)
    print(f"{args.model}, context {args.context}, best of {args.rounds}")
    print(f"{'batch':>5} {'separate ms':>12} {'fused ms':>9} {'fused/separate':>15}")
    for b in batches:
        s, f = min(results[(b, "separate")]), min(results[(b, "fused")])
        print(f"{b:5d} {s:12.2f} {f:9.2f} {f / s:15.3f}")


if __name__ == "__main__":
    main()
