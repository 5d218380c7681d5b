"""Time to first token of long prompts in one in-process engine at each prefill chunk size (`serve --prefill-chunk`),
and with `--variant NAME:module.attribute=value;...` (common.patched) at each: where a long prompt's prefill time goes
when it is chunked, and whether a kernel choice (e.g. which experts kernel takes a chunk's pairs) costs it.

    python -m bench prefill_chunks --model PATH [--tokens 2048 --prompts 3 --chunks 512 2048]
                                   [--variant noslices:mlxd.models.cuda_experts.SLICES=()]

Contenders alternate prompt by prompt, every prompt new (no prefix-cache hit). Prints each contender's median TTFT.
"""

from __future__ import annotations

import statistics

import mlx.core as mx

from bench import common
from bench.suite.prompt_lengths import ttft_ms
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import SchedulerOptions
from mlxd.engine.warmup import warm_up
from mlxd.loading.model_source import load_model_and_tokenizer


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--tokens", type=int, default=2048, help="prompt length (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=3, help="prompts per contender (default: %(default)s)")
    p.add_argument("--chunks", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--variant", help="NAME:module.attribute=value;... also timed at each chunk size")
    args = p.parse_args(argv)
    common.reexec_with_blas(__name__, argv)
    loaded, tokenizer = load_model_and_tokenizer(common.resolve_model(args.model), args.dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    warm_up(runtime)
    name, settings = common.variant(args.variant) if args.variant else ("", "")
    contenders = [(chunk, v) for chunk in args.chunks for v in (["as is", name] if name else ["as is"])]
    times: dict[tuple[int, str], list[float]] = {c: [] for c in contenders}
    salt = 0
    for round_ in range(args.prompts + 1):  # round 0 warms each contender's shapes, left out
        for chunk, v in contenders if round_ % 2 == 0 else contenders[::-1]:
            salt += 1
            ids = common.prompt_ids(runtime.vocab_size, args.tokens, salt=salt)
            with common.patched(settings if v == name else ""):
                elapsed = ttft_ms(runtime, ids, SchedulerOptions(prefill_chunk_size=chunk))
            if round_:
                times[(chunk, v)].append(elapsed)
            mx.clear_cache()
    print(f"\n{args.model} on {mx.default_device()}: TTFT of {args.tokens}-token prompts, medians of {args.prompts}")
    print(common.table(["chunk", "contender", "ttft ms", "prompt tok/s"],
                       [[c, v, statistics.median(t), args.tokens / statistics.median(t) * 1e3]
                        for (c, v), t in times.items()]))


if __name__ == "__main__":
    main()
