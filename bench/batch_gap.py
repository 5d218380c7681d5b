"""Where 16-stream decode throughput goes, in one process, alternating rounds: mlxd's engine (Scheduler) against
mlx-lm's BatchGenerator, and each one's bare decode loop (mlxd's DecodeBatch over prefilled rows; mlx-lm's model
over its BatchKVCache). mlx-lm must be installed (the GPU machine, the bench venv); it is only the anchor.

    python bench/batch_gap.py --model PATH [--streams 16 --rounds 3]

Decode-phase tokens/s of each, then per-round ratios. engine / DecodeBatch is what the engine loses around the
forward pass, DecodeBatch / mlx-lm loop what the forward passes differ by. engine / BatchGenerator is the
16-stream target's ratio without gRPC, but take the target from batch_throughput.py: with both models in one
process BatchGenerator ran slower than in a process of its own (840 against 1,060-1,500 tok/s on one H100).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batch_inprocess  # noqa: E402
import mlx_lm_batch_anchor  # noqa: E402
from batch_step_compare import lengths_for, mlx_lm_ms, mlxd_batch_ms  # noqa: E402
from batch_throughput import stream_prompts  # noqa: E402
from mlx_lm.utils import load_model as lm_load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runtime, loaded = batch_inprocess.load_runtime(args.model)
    theirs, _ = lm_load_model(args.model)
    prompts = stream_prompts(loaded.vocab_size, args.streams, args.prompt_tokens)
    rows = lengths_for("aligned", args.streams, args.prompt_tokens)
    per_step = 1000 * args.streams
    engines = {
        "engine": lambda: batch_inprocess.run(runtime, prompts, args.new_tokens),
        "BatchGenerator": lambda: mlx_lm_batch_anchor.run(theirs, prompts, args.new_tokens)["decode_tps"],
        "DecodeBatch": lambda: per_step / mlxd_batch_ms(loaded.model, rows, args.new_tokens // 2),
        "mlx-lm loop": lambda: per_step / mlx_lm_ms(theirs, rows, args.new_tokens // 2),
    }
    batch_inprocess.run(runtime, prompts, 16)  # warm-up
    mlx_lm_batch_anchor.run(theirs, prompts, 16)
    tps: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(args.rounds):
        for name in list(engines)[:: 1 if r % 2 == 0 else -1]:
            tps[name].append(engines[name]())
            print(f"round {r}: {name} {tps[name][-1]:.0f} tok/s", flush=True)

    def ratios(a: str, b: str) -> str:
        return " ".join(f"{x / y:.3f}" for x, y in zip(tps[a], tps[b]))

    print(f"{args.streams} streams, {args.prompt_tokens}-token prompts, decode tok/s per round:")
    for name, values in tps.items():
        print(f"  {name:15s} " + " ".join(f"{v:7.0f}" for v in values))
    print(f"  engine / BatchGenerator      {ratios('engine', 'BatchGenerator')}")
    print(f"  DecodeBatch / mlx-lm loop    {ratios('DecodeBatch', 'mlx-lm loop')}")
    print(f"  engine / DecodeBatch         {ratios('engine', 'DecodeBatch')}")


if __name__ == "__main__":
    main()
