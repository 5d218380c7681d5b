"""What the first request of each kind pays after the daemon's warm-up: on a GPU, MLX compiles a kernel on its first
use, and the warm-up before SERVING (engine/warmup.py) is meant to meet every one a request can. In one in-process
engine warmed up as the daemon warms itself, each kind of request runs twice, each time with a new prompt of the
same length; a first time far above the second is a compile inside a request.

    python -m bench first_requests [--model smollm2|PATH] [--draft-model PATH | --speculate ngram] [--depth 4]
                                   [--skip warm_up_sampling] [--set module.attribute=value;...]

Kinds: greedy; sampled (temperature 0.8, every filter: top-k/p, min-p, penalties, a bias, a seed); logprobs (top 5,
and the prompt's); constrained (a constraint allowing every token: the masks' device work, not a grammar's); with
speculation also each of those drafting at every step (verify steps, sampled ones verified by rejection). --skip
replaces the named functions of engine/warmup.py with no-ops: the first requests as they were without them. --set
runs it all (the warm-up too) with those module attributes set (`common.patched`), e.g.
mlxd.models.llama.TransformerBlock.COMPILED_DECODE=True: whether a switch leaves a compile or a retrace to requests.
Then batches of --batches requests, the kinds taking turns, so a step holds rows of every kind (drafting too).
Printed: per case, the first and second time (ms) until every request had its first token and until the last of
--new-tokens.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import mlx.core as mx

from bench import common
from mlxd.engine import warmup
from mlxd.engine.request import FinalEvent, GenerationRequest, TokenEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_draft_model, load_model_and_tokenizer

SAMPLED = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
                         presence_penalty=0.5, frequency_penalty=0.5, logit_bias={7: 0.5}, seed=1)


def kinds(vocab_size: int) -> dict[str, dict]:
    """GenerationRequest arguments of each kind (see the module's text)."""
    return {"greedy": dict(sampling=SamplingParams(temperature=0.0)),
            "sampled": dict(sampling=SAMPLED),
            "logprobs": dict(sampling=SamplingParams(temperature=0.0), logprobs=True, top_logprobs=5,
                             prompt_logprobs=True),
            "constrained": dict(sampling=SamplingParams(temperature=0.0), constraint=warmup.AnyToken(vocab_size))}


def timed(runtime: ModelRuntime, requests: list[GenerationRequest], options: SchedulerOptions) -> tuple[float, float]:
    """Milliseconds until every request had its first token, and until the last token, in a scheduler of
    `options` of their own."""
    scheduler = Scheduler(runtime, options)
    start, firsts = time.perf_counter(), dict[str, float]()
    for request in requests:
        scheduler.add(request)
    while scheduler.has_work():
        for request, event in scheduler.step():
            if isinstance(event, TokenEvent):
                firsts.setdefault(request.request_id, time.perf_counter())
            elif not isinstance(event, FinalEvent):
                raise RuntimeError(f"{request.request_id}: {event}")
    end = time.perf_counter()
    return (max(firsts.values(), default=end) - start) * 1e3, (end - start) * 1e3


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--draft-model", help="a draft model's folder or GGUF (serve --draft-model)")
    p.add_argument("--speculate", default="", help="ngram: prompt lookup (serve --speculate)")
    p.add_argument("--depth", type=int, default=0, help="serve --speculate-depth (0: the model's default)")
    p.add_argument("--batch-rows", type=int, default=16, help="serve --max-batch-size, for the warm-up")
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--batches", type=int, nargs="*", default=[2, 8, 16],
                   help="also batches of these many requests, the kinds taking turns (rows of every kind in a step)")
    p.add_argument("--skip", nargs="*", default=[], help="engine/warmup.py functions replaced with no-ops")
    p.add_argument("--set", default="", metavar="SETTINGS", help="module.attribute=value;... for the whole run")
    args = p.parse_args(argv)
    common.reexec_with_blas(__name__, argv)
    with common.patched(args.set):
        if args.set:
            print(f"set: {args.set}")
        run(args)


def run(args: argparse.Namespace) -> None:
    loaded, tokenizer = load_model_and_tokenizer(common.resolve_model(args.model), args.dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    if args.draft_model:
        runtime.draft_model = load_draft_model(common.resolve_model(args.draft_model), args.dtype, tokenizer)
    depth = runtime.speculation_depth(args.depth)
    speculating = bool(args.speculate or args.draft_model)
    for name in args.skip:
        setattr(warmup, name, lambda *_, **__: None)
    start = time.perf_counter()
    warmup.warm_up(runtime, speculate=args.speculate, speculate_depth=depth, batch_rows=args.batch_rows)
    print(f"warm-up {time.perf_counter() - start:.1f} s (skipped: {', '.join(args.skip) or 'nothing'})")

    plain = SchedulerOptions(args.prompt_tokens, speculate_depth=0)
    drafting = SchedulerOptions(args.prompt_tokens, speculate=args.speculate, speculate_depth=depth,
                                speculate_adaptive=False)
    lines, salt = [], 0

    def request(kind: str, fields: dict, options: SchedulerOptions) -> GenerationRequest:
        nonlocal salt
        salt += 1
        ids = common.prompt_ids(runtime.vocab_size, args.prompt_tokens, salt=salt)
        if options.speculate_depth and speculating:  # the prompt said twice, so prompt lookup finds drafts
            ids = ids[:args.prompt_tokens // 2] * 2
        if "constraint" in fields:  # a constraint of its own: each follows its request's tokens
            fields = {**fields, "constraint": warmup.AnyToken(runtime.vocab_size)}
        return GenerationRequest(f"{kind}-{salt}", ids, max_tokens=args.new_tokens, ignore_eos=True, **fields)

    every = kinds(runtime.vocab_size)
    cases: list[tuple[str, list[str], SchedulerOptions]] = []
    for kind in every:
        cases.append((kind, [kind], plain))
        if speculating:
            cases.append((f"{kind}, drafting", [kind], drafting))
    for rows in args.batches:
        mixed = [list(every)[i % len(every)] for i in range(rows)]
        cases.append((f"{rows} rows, mixed", mixed, replace(plain, max_batch_size=rows)))
        if speculating:
            cases.append((f"{rows} rows, mixed, drafting", mixed, replace(drafting, max_batch_size=rows)))
    for label, case_kinds, options in cases:
        times = [timed(runtime, [request(kind, every[kind], options) for kind in case_kinds], options)
                 for _ in range(2)]
        lines.append([label, times[0][0], times[1][0], times[0][1], times[1][1]])
    print(f"\n{args.model} on {mx.default_device()}: the first two requests of each kind after the warm-up "
          f"({args.prompt_tokens}-token prompts, {args.new_tokens} new tokens), ms")
    print(common.table(["kind", "1st TTFT", "2nd TTFT", "1st total", "2nd total"], lines))


if __name__ == "__main__":
    main()
