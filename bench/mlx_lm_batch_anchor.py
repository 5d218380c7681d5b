"""mlx-lm's BatchGenerator on the same weights and prompts as bench/batch_throughput.py: the anchor for the
aggregate throughput of concurrent streams. mlx-lm is not a dependency of mlxd; this runs only where it is
installed (the GPU machine, a bench venv).

Prints one JSON line per measured run: total and decode-phase tokens/s (the same definitions as the caller).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mlx_lm.generate import BatchGenerator
from mlx_lm.utils import load_model

from batch_throughput import stream_prompts, summarize


def run(model, prompts: list[list[int]], new_tokens: int) -> dict:
    gen = BatchGenerator(model, max_tokens=new_tokens, completion_batch_size=len(prompts))
    seen: set[int] = set()
    tokens = 0
    start = time.perf_counter()
    all_started = start
    gen.insert(prompts, [new_tokens] * len(prompts))
    while responses := gen.next_generated():
        for r in responses:
            tokens += 1
            if r.uid not in seen:
                seen.add(r.uid)
                if len(seen) == len(prompts):
                    all_started = time.perf_counter()
    end = time.perf_counter()
    gen.close()
    return summarize(start, all_started, end, tokens, len(prompts))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--mixed", action="store_true")
    args = parser.parse_args()
    model, config = load_model(args.model)
    prompts = stream_prompts(config["vocab_size"], args.streams, args.prompt_tokens, args.mixed)
    run(model, prompts, min(args.new_tokens, 16))  # warm-up
    print(json.dumps(run(model, prompts, args.new_tokens)), flush=True)


if __name__ == "__main__":
    main()
