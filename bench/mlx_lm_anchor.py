"""mlx-lm's in-process generate_step on the same weights: the anchor mlxd is compared against.
mlx-lm is not a dependency of mlxd; this script runs only where it is installed (the GPU machine, a bench venv).

Prints one JSON line per run: prefill and decode tokens/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model

from inprocess import prompt_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    model, config = load_model(args.model)
    prompt = mx.array(prompt_ids(config["vocab_size"], args.prompt_tokens))
    for run in range(args.runs + 1):  # the first run warms up
        start = time.perf_counter()
        first = None
        for n, _ in enumerate(generate_step(prompt, model, max_tokens=args.new_tokens, sampler=lambda x: mx.argmax(x, -1))):
            if n == 0:
                first = time.perf_counter()
        end = time.perf_counter()
        if run:
            print(json.dumps({"prefill_tps": args.prompt_tokens / (first - start),
                              "decode_tps": (args.new_tokens - 1) / (end - first)}), flush=True)


if __name__ == "__main__":
    main()
