"""The engine's batched decode in-process (no gRPC): N greedy streams through one Scheduler, tokens/s, and
optionally a cProfile of the worker's Python time. Separates engine overhead from the service's.

    python bench/batch_inprocess.py --model PATH [--streams 16 --new-tokens 256 --mixed --profile OUT.txt --breakdown]

--breakdown splits the decode phase's wall time into waiting on the device (inside mx.eval) and the worker's
Python time in the main parts of a step, per step: where the step's time goes when the device is not the limit.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch_throughput import stream_prompts  # noqa: E402
from mlxd.engine.request import GenerationRequest  # noqa: E402
from mlxd.engine.scheduler import ModelRuntime, Scheduler  # noqa: E402
from mlxd.generation.sampling import SamplingParams  # noqa: E402
from mlxd.loading.model_source import load_model_and_tokenizer  # noqa: E402


class Breakdown:
    """Wraps functions to add up their wall time (exclusive of the device wait inside them)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


def install_breakdown(runtime: ModelRuntime) -> Breakdown:
    from mlxd.engine import batch, decoder, sequence
    b = Breakdown()
    b.wrap(mx, "eval", "device wait (mx.eval)")
    b.wrap(mx, "async_eval", "mx.async_eval")
    b.wrap(type(runtime.model), "__call__", "model graph build")
    b.wrap(decoder, "queue_batch_step", "queue step (graph + sampling + async_eval)")
    b.wrap(sequence.Sequence, "accept", "accept tokens (detokenize, stops, events)")
    b.wrap(batch.DecodeBatch, "_regroup", "regroup rows and caches")
    b.wrap(Scheduler, "step", "scheduler step (all)")
    return b


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


def load_runtime(path: Path):
    """The engine's runtime for the model at `path` (as the worker builds it), and the loaded model."""
    loaded, tokenizer = load_model_and_tokenizer(path)
    eos = frozenset(tokenizer.eos_token_ids)
    runtime = ModelRuntime(loaded.model, tokenizer.decode, tokenizer.byte_fallback_ids, eos, loaded.context_length,
                           loaded.vocab_size)
    return runtime, loaded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--mixed", action="store_true", help="prompt lengths spread around --prompt-tokens")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args()
    runtime, loaded = load_runtime(args.model)
    prompts = stream_prompts(loaded.vocab_size, args.streams, args.prompt_tokens, args.mixed)
    run(runtime, prompts, 16)
    print(f"{args.streams} streams in-process: {run(runtime, prompts, args.new_tokens):.1f} tok/s (decode phase)")
    if args.breakdown:
        steps = args.new_tokens
        breakdown = install_breakdown(runtime)
        start = time.perf_counter()
        tps = run(runtime, prompts, args.new_tokens)
        wall = time.perf_counter() - start
        print(f"breakdown ({tps:.1f} tok/s), ms per decode step ({steps} steps; prefill included in the totals):")
        for label, seconds in sorted(breakdown.seconds.items(), key=lambda kv: -kv[1]):
            print(f"  {label:45s} {seconds / steps * 1e3:8.3f}")
        print(f"  {'wall':45s} {wall / steps * 1e3:8.3f}")
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
