"""n-gram speculation against plain decoding in one Scheduler on this thread (no gRPC): where a speculative step's
time goes when the device is not the limit (a GPU), and what the policy costs when it drafts nothing.

    python -m bench speculation_inprocess [--model smollm2|PATH] [--tasks rewrite,free] [--streams 1,16]
                                          [--max-tokens 96] [--rounds 2] [--depth 8] [--profile] [--oracle]
                                          [--variant NAME:module.attribute=value;...] [--served]

The tasks and prompts are `speculative`'s (rendered with the model's chat template); every case runs once unmeasured
first (on a GPU, MLX compiles kernels for each new shape), then its rounds alternate plain
(GenerationRequest.speculation = 0) and speculative, in one Scheduler each made with `--speculate ngram`. Prints
decode-phase tok/s of each, their ratio, the ratio of whole requests' rates (from the first request to the last
token: the streams' admission counted, which speculation may slow) and the acceptance. With --served each mode keeps
one Scheduler for every case and the cases take turns in each round, so a speculator's prior and measured costs
carry from request to request as in one daemon (what `speculation.NEW_ROW_CAP` is about; --profile is not run then).
Each `--variant` adds rounds of speculation with some module attributes set (`common.patched`), interleaved with the
others in the same process. With --profile the last round of each case runs again under cProfile and the functions
with the most own time are written to --out, with a step's parts (cumulative ms per step: the verify step, its
acceptance, the caches' rollback, the drafting policy) printed.

--oracle adds rounds whose rows draft what they will decode: each case's greedy continuation, recorded by a plain
run of its prompt first, served by the n-gram index in place of its lookup (OracleIndex). Every draft holds and
costs a list slice, so the rate is the mechanism's ceiling at the chosen depth: what verify steps of 1 + depth tokens
a row, their acceptance and rollback and the adaptive policy leave of depth + 1 tokens a step. (A target drafting
for itself pays a decode step of its own for each drafted token: at full acceptance its ceiling is about 1x.)
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
from collections.abc import Iterator
from typing import Any

import mlx.core as mx

from bench import common
from bench.suite.batch_inprocess import drive
from bench.suite.speculative import TASKS
from mlxd.engine import speculation as speculation_module
from mlxd.engine.request import GenerationRequest, TokenEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.engine.speculation import NGRAM_DEPTH, NgramIndex
from mlxd.engine.warmup import run_to_completion
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer

PARTS = {  # label: (file end, function): cumulative time, per decode step
    "scheduler step (all)": ("engine/scheduler.py", "_decode_one_step"),
    "drafts and the pause before a verify step": ("engine/scheduler.py", "_drafts"),
    "runner: verify step (all)": ("engine/runner.py", "_verify"),
    "runner: accept (sync, read)": ("generation/verification.py", "accept_runs"),
    "caches: rollback": ("models/batch_cache.py", "rollback"),
    "runner: plain step graph": ("engine/runner.py", "_forward_step"),
    "runner: read a plain step (device wait)": ("engine/runner.py", "read"),
    "speculator: observe": ("engine/speculation.py", "observe"),
    "speculator: wants_drafts": ("engine/speculation.py", "wants_drafts"),
    "output: deliver": ("engine/scheduler.py", "_deliver"),
}


class OracleIndex(NgramIndex):
    """An n-gram index that drafts the recorded greedy continuation of its prompt (`--oracle`; CONTINUATIONS), from
    the tokens it has been told so far: looked up a token early, its first draft is the newest token, as a lookup's
    is meant to be."""

    CONTINUATIONS: dict[tuple[int, ...], list[int]] = {}

    def __init__(self, tokens: list[int], max_ngram: int = 3) -> None:
        super().__init__(tokens, max_ngram)
        self.prompt_length = len(tokens)
        self.continuation = self.CONTINUATIONS.get(tuple(tokens), [])

    def draft(self, depth: int) -> list[int]:
        told = len(self.tokens) - self.prompt_length
        return self.continuation[told:told + max(depth, 0)]


@contextlib.contextmanager
def oracle_drafts() -> Iterator[None]:
    """Speculators made inside draft by OracleIndex."""
    saved = speculation_module.NgramIndex
    speculation_module.NgramIndex = OracleIndex  # type: ignore[misc]
    try:
        yield
    finally:
        speculation_module.NgramIndex = saved  # type: ignore[misc]


def greedy_continuation(runtime: ModelRuntime, prompt: list[int], max_tokens: int) -> list[int]:
    """The tokens plain greedy decoding gives `prompt` (one request alone: the engine's batched rows equal it)."""
    request = GenerationRequest("oracle", prompt, SamplingParams(temperature=0.0), max_tokens=max_tokens,
                                ignore_eos=True, speculation=0)
    return [t for event in run_to_completion(runtime, request) if isinstance(event, TokenEvent)
            for t in event.token_ids]


def run(runtime: ModelRuntime, prompt: list[int], streams: int, max_tokens: int, speculation: int | None,
        profiler: cProfile.Profile | None = None, depth: int = 4, scheduler: Scheduler | None = None) -> dict[str, Any]:
    """`streams` greedy requests of `prompt` through `scheduler` or a new one (batch_inprocess.drive): decode-phase
    rates, the scheduler steps taken and the acceptance (accepted / drafted tokens)."""
    if scheduler is None:
        scheduler = Scheduler(runtime, SchedulerOptions(512, max_batch_size=streams, speculate="ngram",
                                                        speculate_depth=depth))
    requests = [GenerationRequest(f"r{i}", prompt, SamplingParams(temperature=0.0), max_tokens=max_tokens,
                                  ignore_eos=True, speculation=speculation) for i in range(streams)]
    row = drive(scheduler, requests, profiler)
    return {**row, "acceptance": row["accepted"] / row["drafted"] if row["drafted"] else 0.0}


def parts(stats: pstats.Stats, steps: int) -> list[list[Any]]:
    """Each of PARTS: its cumulative ms per scheduler step and its calls."""
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    lines = []
    for label, (file_end, name) in PARTS.items():
        key = next((k for k in table if k[2] == name and k[0].endswith(file_end)), None)
        lines.append([label, (table[key][3] if key else 0.0) / steps * 1e3, table[key][0] if key else 0])
    return lines


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    common.add_out_arg(p, "speculation_inprocess")
    p.add_argument("--tasks", default="rewrite,free")
    p.add_argument("--streams", default="1,16")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--depth", type=int, default=NGRAM_DEPTH,
                   help="the most tokens a row drafts a step (default: serve's with prompt lookup, %(default)s)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--oracle", action="store_true", help="also rounds drafting each case's greedy continuation")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:SETTINGS",
                   help="also rounds of speculation with SETTINGS (module.attribute=value;...: common.patched), "
                        "e.g. 'margin:mlxd.engine.speculation._MARGIN=1.2'; repeatable")
    p.add_argument("--served", action="store_true",
                   help="each mode's one Scheduler serves every case, the cases in turn in each round (its "
                        "speculator's prior and measured costs carried from request to request, as in one daemon)")
    args = p.parse_args(argv)
    # name -> (GenerationRequest.speculation, settings): plain decoding, speculation, then each variant of it
    modes = {"plain": (0, ""), "spec": (None, "")} | {name: (None, settings)
                                                      for name, settings in map(common.variant, args.variant)}
    if args.oracle:
        modes["oracle"] = (None, "")
    common.reexec_with_blas(__name__, argv)
    mx.set_default_stream(mx.new_stream(mx.default_device()))
    args.out.mkdir(parents=True, exist_ok=True)
    loaded, tokenizer = load_model_and_tokenizer(common.resolve_model(args.model), "auto")
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    # "task xN" -> (task, prompt, streams); an oracle's continuation recorded once a prompt
    cases: dict[str, tuple[str, list[int], int]] = {}
    for task in args.tasks.split(","):
        prompt = tokenizer.encode(tokenizer.apply_chat_template(TASKS[task]), add_special_tokens=False)
        if args.oracle:
            OracleIndex.CONTINUATIONS[tuple(prompt)] = greedy_continuation(runtime, prompt, args.max_tokens)
        for streams in (int(s) for s in args.streams.split(",")):
            cases[f"{task} x{streams}"] = (task, prompt, streams)
    served = {name: Scheduler(runtime, SchedulerOptions(512, max_batch_size=max(n for _, _, n in cases.values()),
                                                        speculate="ngram", speculate_depth=args.depth))
              for name in modes} if args.served else {}

    def one(name: str, case: str, _round: int) -> dict[str, Any]:
        speculation, settings = modes[name]
        _, prompt, streams = cases[case]
        with common.patched(settings), oracle_drafts() if name == "oracle" else contextlib.nullcontext():
            return run(runtime, prompt, streams, args.max_tokens, speculation, depth=args.depth,
                       scheduler=served.get(name))

    def unmeasured(case: str) -> None:  # kernels compile for new shapes on a GPU
        if args.served:
            # First in a scheduler of its own, drafting at every width (a prompt that copies nothing drafts too):
            # a served scheduler keeps the verify costs it measures, and the first mode's had kept those of steps
            # that compiled (an H100, session 43: main's settings, first, drafted nothing in two rounds of the
            # rewrite while the variants after it drafted from their first).
            _, prompt, streams = cases[case]
            for width in range(1, (args.depth or NGRAM_DEPTH) + 1):
                fixed = Scheduler(runtime, SchedulerOptions(512, max_batch_size=streams, speculate="ngram",
                                                            speculate_depth=width, speculate_adaptive=False))
                run(runtime, prompt, streams, 16, None, scheduler=fixed)
        for name in modes:
            one(name, case, 0)

    lines: list[list[Any]] = []
    if args.served:  # the cases take turns in each round
        for case in cases:
            unmeasured(case)
        rows = common.alternate(args.rounds, list(cases), list(modes), one)
        lines = [line for case in cases for line in summary(rows, case, cases[case], list(modes))]
    else:  # each case's rounds before the next case's
        for case, (task, prompt, streams) in cases.items():
            unmeasured(case)
            lines += summary(common.alternate(args.rounds, [case], list(modes), one), case, cases[case], list(modes))
            if args.profile:
                for name, speculation in (("plain", 0), ("spec", None)):
                    profiler = cProfile.Profile()
                    row = run(runtime, prompt, streams, args.max_tokens, speculation, profiler, args.depth)
                    stats = pstats.Stats(profiler)
                    print(f"{case} {name}: {row['decode_tps']:.1f} tok/s profiled, {row['steps']} steps; "
                          "ms per scheduler step (cumulative), calls:")
                    print(common.table(["part", "ms/step", "calls"], parts(stats, row["steps"])))
                    text = io.StringIO()
                    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
                    (args.out / f"profile-{task}-{streams}-{name}.txt").write_text(text.getvalue())
    print(f"\n{args.model}: n-gram speculation in-process, {args.max_tokens} tokens, medians of {args.rounds} rounds")
    print(common.table(["task", "streams", "mode", "plain tok/s", "spec tok/s", "ratio", "whole ratio", "acceptance",
                        "steps plain", "steps spec"],
                       lines))


def summary(rows: list[common.Row], case: str, what: tuple[str, list[int], int], modes: list[str]) -> list[list[Any]]:
    """A table line for each mode but plain, against plain, from the rounds of `case` ((task, prompt, streams))."""
    task, _, streams = what
    plain = common.median(rows, "decode_tps", case=case, contender="plain")
    lines = []
    for name in modes[1:]:
        spec = common.median(rows, "decode_tps", case=case, contender=name)
        total = (common.median(rows, "total_tps", case=case, contender=name)
                 / common.median(rows, "total_tps", case=case, contender="plain"))
        lines.append([task, streams, name, plain, spec, spec / plain, total,
                      common.median(rows, "acceptance", case=case, contender=name),
                      common.median(rows, "steps", case=case, contender="plain"),
                      common.median(rows, "steps", case=case, contender=name)])
    return lines


if __name__ == "__main__":
    main()
