"""Time to first token of prompts each of a length not seen before, in one in-process engine: as the code stands
against `--variant NAME:module.attribute=value;...` (common.patched), the contenders alternating prompt by prompt,
each prompt's length new to both. On CUDA a new length is a new attention shape (MLX's fused kernel plans each).

    python -m bench prompt_lengths [--model smollm2|PATH] [--prompts 24 --shortest 100 --longest 1900]
                                   [--variant fused:mlxd.models.ops_mlx.SMALL_SCORES=0]

The engine is warmed up as the daemon warms itself (engine/warmup.py) first. Prints each contender's median and
mean TTFT and their ratio.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import mlx.core as mx

from bench import common
from mlxd.engine.request import GenerationRequest
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import SchedulerOptions
from mlxd.engine.warmup import run_to_completion, warm_up
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer


def ttft_ms(runtime: ModelRuntime, ids: list[int], options: SchedulerOptions | None = None) -> float:
    """Milliseconds to the first token of a greedy request of `ids`, alone in a scheduler of `options`."""
    request = GenerationRequest(f"prompt-{len(ids)}", ids, SamplingParams(temperature=0.0), max_tokens=1,
                                ignore_eos=True)
    start = time.perf_counter()
    run_to_completion(runtime, request, options)
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--prompts", type=int, default=24, help="prompts per contender (default: %(default)s)")
    p.add_argument("--shortest", type=int, default=100)
    p.add_argument("--longest", type=int, default=1900)
    p.add_argument("--variant", required=True, help="NAME:module.attribute=value;... (see above)")
    args = p.parse_args(argv)
    common.reexec_with_blas(__name__, argv)
    loaded, tokenizer = load_model_and_tokenizer(common.resolve_model(args.model), args.dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    warm_up(runtime)
    name, settings = common.variant(args.variant)
    step = (args.longest - args.shortest) / (2 * args.prompts)
    lengths = [args.shortest + round(i * step) for i in range(2 * args.prompts)]  # all distinct
    times: dict[str, list[float]] = {"as is": [], name: []}
    for i, length in enumerate(lengths):
        contender = "as is" if i % 2 == (i // 2) % 2 else name  # the order turns each pair
        ids = common.prompt_ids(runtime.vocab_size, length, salt=i)
        with common.patched(settings) if contender == name else contextlib.nullcontext():
            times[contender].append(ttft_ms(runtime, ids))
        mx.clear_cache()
    print(f"\n{args.model} on {mx.default_device()}: TTFT of {args.prompts} prompts each, every length new "
          f"({args.shortest}-{args.longest} tokens), ms")
    lines = [[c, statistics.median(t), statistics.mean(t), max(t)] for c, t in times.items()]
    print(common.table(["contender", "median", "mean", "max"], lines))
    print(f"{name} / as is: median {statistics.median(times[name]) / statistics.median(times['as is']):.3f}, "
          f"mean {statistics.mean(times[name]) / statistics.mean(times['as is']):.3f}")


if __name__ == "__main__":
    main()
