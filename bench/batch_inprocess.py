"""The engine's batched decode in-process (no gRPC): N greedy streams through one Scheduler, tokens/s, and
optionally a cProfile of the worker's Python time. Separates engine overhead from the service's.

    python bench/batch_inprocess.py --model PATH [--streams 16 --new-tokens 256 --profile OUT.txt]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch_throughput import stream_prompts  # noqa: E402
from mlxd.engine.request import GenerationRequest  # noqa: E402
from mlxd.engine.scheduler import ModelRuntime, Scheduler  # noqa: E402
from mlxd.generation.sampling import SamplingParams  # noqa: E402
from mlxd.loading.model_source import load_model_and_tokenizer  # noqa: E402


def run(runtime: ModelRuntime, prompts: list[list[int]], new_tokens: int) -> float:
    scheduler = Scheduler(runtime, prefill_chunk_size=512, max_batch_size=len(prompts), prefix_cache_bytes=0)
    requests = [GenerationRequest(f"r{i}", p, SamplingParams(temperature=0.0), max_tokens=new_tokens,
                                  ignore_eos=True) for i, p in enumerate(prompts)]
    scheduler.waiting.extend(requests)
    while scheduler.prefilling or scheduler.waiting:
        scheduler.step()
    start = time.perf_counter()
    while scheduler.has_work():
        scheduler.step()
    return len(prompts) * (new_tokens - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    loaded, tokenizer = load_model_and_tokenizer(args.model)
    eos = frozenset(tokenizer.eos_token_ids)
    runtime = ModelRuntime(loaded.model, tokenizer.decode, tokenizer.byte_fallback_ids, eos, loaded.context_length,
                           loaded.vocab_size)
    prompts = stream_prompts(loaded.vocab_size, args.streams, args.prompt_tokens)
    run(runtime, prompts, 16)
    print(f"{args.streams} streams in-process: {run(runtime, prompts, args.new_tokens):.1f} tok/s (decode phase)")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(runtime, prompts, args.new_tokens)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
        args.profile.write_text(text.getvalue())


if __name__ == "__main__":
    main()
