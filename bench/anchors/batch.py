"""mlx-lm's BatchGenerator in a process of its own: the anchor of batch_throughput (N concurrent streams).

    python -m bench.anchors.batch --model MLX_FOLDER

Speaks bench/anchors/protocol.py: each job {"prompts": [[ids], ...], "new_tokens": N} generates every prompt
greedily to exactly N tokens and is answered with bench.common.batch_rates (the definitions batch_throughput
uses for mlxd's streams). mlx-lm is not an mlxd dependency: it comes with the bench venv (scripts/bench_env.sh).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.anchors.protocol import EngineProcess, Job, config_vocab_size, serve
from bench.common import Row, batch_rates


def start(model: Path, env: dict[str, str], log: Path) -> EngineProcess:
    """The benchmark's side: BatchGenerator on the mlx-lm folder `model` in a process of its own."""
    return EngineProcess("batch", ["--model", str(model)], env, log)


def run(process: EngineProcess, prompts: list[list[int]], new_tokens: int) -> Row:
    return process.ask({"prompts": prompts, "new_tokens": new_tokens})


def main() -> None:
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.utils import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()
    model, config = load_model(args.model)

    def handle(job: Job) -> Job:
        prompts, new_tokens = job["prompts"], job["new_tokens"]
        gen = BatchGenerator(model, max_tokens=new_tokens, completion_batch_size=len(prompts))
        seen: set[int] = set()
        tokens = 0
        start = all_started = time.perf_counter()
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
        return batch_rates(start, all_started, end, tokens, len(prompts))

    serve(handle, {"vocab_size": config_vocab_size(config)})


if __name__ == "__main__":
    main()
