"""The engine's batched decode without gRPC: N greedy streams through one Scheduler on this thread, as the
worker drives it. Decode-phase tok/s here against batch_throughput's over gRPC separates the service's cost from
the engine's; --breakdown says where a step's time goes when the device is not the limit. OpenBLAS is
preloaded as `mlxd serve` preloads it (the benchmark re-executes itself once).

    python -m bench batch_inprocess [--model smollm2|PATH --streams 16 --new-tokens 256 --mixed]
                                    [--constrained] [--breakdown] [--timeline] [--profile OUT.txt]
                                    [--variant NAME:module.attribute=value;... --rounds 3]
                                    [--fills free,schema,allow-all,sleep:2,spin:2 --rounds 3]

--breakdown runs once more under cProfile and reads the cumulative time of the runner's and scheduler's main
parts from it (waiting for a step's tokens, the forward pass's graph build, queueing the sampling, regrouping
rows, prefill, a constrained step and its wait for the masks, the per-request output state), per decode step.
Nothing in the daemon is patched; the profiler's own overhead inflates the Python parts (compare its wall time with
the unprofiled run's). Python 3.11's cProfile sees only this thread (the masks are filled on another: their wait
shows here); 3.12's, on the H200's host, listed the mask thread's functions too (`fill_masks`).
--profile writes the 30 functions with the most own time. --constrained puts every stream under
constrained_decode's JSON Schema (a grammar that stays open), as a request's `constraint` would. --timeline runs once
more with a step's parts timed (bench/suite/mask_timeline.py wraps the runner module's functions for that run): the
forward's graph, the read of the step before, the launches, a step call whole and call to call; with --constrained
also the mask thread's jobs and the worker's wait for the masks after its launch. --variant compares instead: rounds
with some module attributes set (`common.patched`) against rounds without, interleaved in one process (two
processes of the same code on a lent GPU machine differ by more than most changes make). --fills compares
constrained steps whose fill differs, interleaved in one process: `schema` (constrained_decode's JSON Schema through
llguidance, its masks in --mask-processes processes; `schema/ITEMS` with constrained_decode's --schema ITEMS, e.g.
`schema/strings`), `schema-p0` (the same, every mask filled in this process),
`free` (no constraint), and bench/suite/fake_constraints.py's `allow-all` (the constrained step's structure, a fill
costing nothing), `sleep:MS` (a fill taking MS ms without the CPU), `spin:MS` (MS ms of a core); a kind followed by
`@SECONDS` runs with Python's switch interval set so (sys.setswitchinterval; 0.005 by default), and one after
`half:` with every other stream free (a batch mixing constrained and free rows, e.g. `half:schema`).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from bench import common
from bench.suite import fake_constraints, mask_timeline
from bench.suite.constrained_decode import CONSTRAINT
from bench.suite.constrained_decode import constraint as schema_constraint
from mlxd.engine.constraint import TokenConstraint
from mlxd.engine.request import ErrorEvent, FinalEvent, GenerationRequest, TokenEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer
from mlxd.service.constraints import Grammars

# Steps pipelined (the step before read after the next is queued): None as the daemon's worker does (on a GPU only);
# `--settings bench.suite.batch_inprocess.PIPELINED=True` pipelines a CPU's too (its constrained rows then masked, as a
# GPU's are, not checked: engine/checked_greedy.py).
PIPELINED: bool | None = None
# label -> (file name ending, function name) as cProfile records them. MLX's functions are not Python's, so
# cProfile does not see mx.eval itself: the device wait shows as the time to read a queued step's tokens.
PARTS = {
    "scheduler step (all)": ("engine/scheduler.py", "step"),
    "runner: read a step's tokens (device wait)": ("engine/runner.py", "read"),
    "runner: the forward pass's graph": ("engine/runner.py", "_forward_step"),
    "runner: queue the sampling (async_eval)": ("engine/runner.py", "_sample"),
    "runner: a constrained step (all)": ("engine/runner.py", "_constrained_step"),
    "  of which waiting for the masks": ("engine/mask_thread.py", "result"),
    "runner: regroup rows and caches": ("engine/runner.py", "_regroup"),
    "runner: prefill chunks": ("engine/runner.py", "prefill"),
    "output: accept tokens (detokenize, stops, events)": ("engine/output.py", "accept"),
}
Stat = tuple[int, int, float, float, dict]  # pstats: calls, primitive calls, own time, cumulative time, callers


def run(runtime: ModelRuntime, prompts: list[list[int]], new_tokens: int,
        grammars: Grammars | None = None, fill: str = "schema", alone: Grammars | None = None) -> common.Row:
    """Decode-phase tok/s: tokens after every stream has its first, over the time since (bench.common). With
    `grammars`, every stream under constrained_decode's schema, or with `fill` another of --fills' kinds (with
    `/ITEMS`: constrained_decode's schema of those items, e.g. `schema/strings`; with `@SECONDS`: Python's switch
    interval set so meanwhile, as sys.setswitchinterval takes it; `half:KIND`: every other stream free, a batch
    mixing constrained and free rows); `alone`: the
    grammars without mask processes, for `schema-p0`."""
    # Pipelined on a GPU only, as the daemon's worker sets it (engine/worker.py), unless PIPELINED says.
    pipelined = mx.default_device().type != mx.cpu if PIPELINED is None else PIPELINED
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=512, max_batch_size=len(prompts),
                                                    pipelined=pipelined))
    kind, _, interval = fill.partition("@")
    half = kind.startswith("half:")
    kind, _, items = kind.removeprefix("half:").partition("/")
    schema = schema_constraint(items) if items else CONSTRAINT

    def constraint(i: int) -> TokenConstraint | None:
        if grammars is None or kind == "free" or (half and i % 2):
            return None
        if kind == "schema":
            return grammars.constraint(schema)
        if kind == "schema-p0":
            assert alone is not None
            return alone.constraint(schema)
        return fake_constraints.constraint_for(kind, runtime.vocab_size, len(prompts))

    requests = [GenerationRequest(f"r{i}", prompt, SamplingParams(temperature=0.0), max_tokens=new_tokens,
                                  ignore_eos=True, constraint=constraint(i))
                for i, prompt in enumerate(prompts)]
    switch = sys.getswitchinterval()
    try:
        if interval:
            sys.setswitchinterval(float(interval))
        return drive(scheduler, requests)
    finally:
        sys.setswitchinterval(switch)


def drive(scheduler: Scheduler, requests: list[GenerationRequest],
          profiler: cProfile.Profile | None = None) -> common.Row:
    """The requests through the scheduler on this thread, to the end (profiled while stepping, when given): the
    batch's rates (bench.common.batch_rates), the scheduler steps taken and the tokens drafted and accepted (from
    the requests' final events)."""
    for request in requests:
        scheduler.add(request)
    started: set[str] = set()
    tokens = steps = drafted = accepted = 0
    start = all_started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    while scheduler.has_work():
        steps += 1
        for request, event in scheduler.step():
            if isinstance(event, ErrorEvent):
                raise event.error
            if isinstance(event, FinalEvent):
                drafted, accepted = drafted + event.drafted_tokens, accepted + event.accepted_draft_tokens
            if isinstance(event, TokenEvent) and event.token_ids:
                tokens += len(event.token_ids)
                if request.request_id not in started:
                    started.add(request.request_id)
                    if len(started) == len(requests):
                        all_started = time.perf_counter()
    if profiler is not None:
        profiler.disable()
    rates = common.batch_rates(start, all_started, time.perf_counter(), tokens, len(requests))
    return {**rates, "steps": steps, "drafted": drafted, "accepted": accepted}


def compare(runtime: ModelRuntime, prompts: list[list[int]], new_tokens: int, grammars: Grammars | None,
            variants: list[str], rounds: int, fill: str = "schema") -> None:
    """Decode-phase tok/s as the code stands and with each variant's settings, their rounds interleaved (each
    warmed up first; with `grammars`, the streams constrained as `fill` says): medians and each variant's median
    ratio of paired rounds."""
    modes = {"default": ""} | dict(common.variant(v) for v in variants)
    for settings in modes.values():
        with common.patched(settings):
            run(runtime, prompts, 16, grammars, fill)

    def one(name: str) -> common.Row:
        with common.patched(modes[name]):
            return run(runtime, prompts, new_tokens, grammars, fill)

    interleaved("mode", list(modes), "default", rounds, one)


def compare_fills(runtime: ModelRuntime, prompts: list[list[int]], new_tokens: int, grammars: Grammars,
                  alone: Grammars, fills: list[str], rounds: int) -> None:
    """Decode-phase tok/s of each kind of fill (module text), their rounds interleaved (each warmed up first):
    medians and each kind's median ratio of paired rounds to the free streams'."""
    for fill in fills:
        run(runtime, prompts, 16, grammars, fill, alone)
    interleaved("fill", fills, "free" if "free" in fills else fills[0], rounds,
                lambda fill: run(runtime, prompts, new_tokens, grammars, fill, alone))


def interleaved(label: str, contenders: list[str], base: str, rounds: int,
                one: Callable[[str], common.Row]) -> None:
    """Each contender's decode-phase tok/s (`one(contender)`), their rounds interleaved (common.alternate): the
    medians and each one's median ratio of paired rounds to `base`'s, as a table under `label`."""
    rows = common.alternate(rounds, ["decode"], contenders, lambda name, _case, _round: one(name))
    print(common.table([label, "tok/s (median)", f"ratio to {base} (median of rounds)"],
                       [[name, common.median(rows, "decode_tps", contender=name),
                         common.median_ratio(rows, "decode_tps", name, base)] for name in contenders]))
    if (moved := common.spread(rows, "decode_tps", contender=base)) > common.NOISY:
        print(f"noisy: {base}'s rounds spread {moved:.0%}: the ratios are not reliable")


def breakdown(stats: pstats.Stats, steps: int) -> list[list]:
    """ms per decode step of each part in PARTS (cumulative: a part's callees count in it)."""
    table: dict[tuple[str, int, str], Stat] = stats.stats  # type: ignore[attr-defined]

    def key(file_end: str, name: str) -> tuple[str, int, str] | None:
        return next((k for k in table if k[2] == name and k[0].endswith(file_end)), None)

    lines = []
    for label, where in PARTS.items():
        k = key(*where)
        lines.append([label, (table[k][3] if k else 0.0) / steps * 1e3])
    return lines


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--mixed", action="store_true", help="prompt lengths spread around --prompt-tokens")
    p.add_argument("--constrained", action="store_true", help="every stream under a JSON Schema")
    p.add_argument("--breakdown", action="store_true")
    p.add_argument("--timeline", action="store_true", help="time a step's parts (with --constrained: both threads)")
    p.add_argument("--mask-processes", type=int, default=0, help="with --constrained: serve's --mask-processes")
    p.add_argument("--profile", type=Path, help="write the profile's top functions here")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:SETTINGS",
                   help="compare instead: rounds with SETTINGS (module.attribute=value;...: common.patched) against "
                        "rounds without, interleaved in this process; repeatable")
    p.add_argument("--fills", help="compare instead: constrained steps with these fills (comma-separated: free, "
                   "schema, schema-p0, allow-all, sleep:MS, spin:MS, each optionally @SWITCH_SECONDS), "
                   "interleaved in this process")
    p.add_argument("--fill", default="schema", help="with --constrained: one of --fills' kinds (default: schema)")
    p.add_argument("--rounds", type=int, default=3, help="with --variant or --fills: rounds of each")
    p.add_argument("--settings", default="", metavar="module.attribute=value;...",
                   help="set for the whole run (common.patched), e.g. a switch's other setting against --fills")
    args = p.parse_args(argv)
    common.reexec_with_blas(__name__, argv)
    with common.patched(args.settings):
        _main(args)


def _main(args: argparse.Namespace) -> None:
    mx.set_default_stream(mx.new_stream(mx.default_device()))
    loaded, tokenizer = load_model_and_tokenizer(common.resolve_model(args.model), args.dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    grammars = (Grammars(tokenizer, runtime.vocab_size, sorted(runtime.eos_ids), args.mask_processes)
                if args.constrained or args.fills else None)
    prompts = common.stream_prompts(runtime.vocab_size, args.streams, args.prompt_tokens, args.mixed)
    # The same grammars filling every mask in this process (`schema-p0`; its compiler is built only if used).
    alone = Grammars(tokenizer, runtime.vocab_size, sorted(runtime.eos_ids))
    if args.fills:
        assert grammars is not None
        compare_fills(runtime, prompts, args.new_tokens, grammars, alone, args.fills.split(","), args.rounds)
        return
    if args.variant:
        compare(runtime, prompts, args.new_tokens, grammars, args.variant, args.rounds, args.fill)
        return
    run(runtime, prompts, 16, grammars, args.fill, alone)  # warm-up at this batch size
    plain = run(runtime, prompts, args.new_tokens, grammars, args.fill, alone)
    print(f"{args.streams} {'constrained ' if grammars else ''}streams in-process, {args.new_tokens} new tokens each: "
          f"{plain['decode_tps']:.1f} tok/s decode phase, {plain['total_tps']:.1f} total")
    if args.timeline:
        with mask_timeline.timeline() as timings:
            timed = run(runtime, prompts, args.new_tokens, grammars, args.fill, alone)
        print(f"timed: {timed['decode_tps']:.1f} tok/s; each {'constrained ' if grammars else ''}step's parts (ms):")
        print(common.table(["part", "steps", "median", "p90"], mask_timeline.table(timings)))
    if not (args.breakdown or args.profile):
        return
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    profiled = run(runtime, prompts, args.new_tokens, grammars, args.fill, alone)
    profiler.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    if args.breakdown:
        steps = args.new_tokens
        print(f"profiled: {profiled['decode_tps']:.1f} tok/s; ms per decode step ({steps} steps, prefill included "
              f"in the totals):")
        print(common.table(["part", "ms/step"], breakdown(stats, steps) + [["wall", wall / steps * 1e3]]))
    if args.profile:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
        args.profile.write_text(text.getvalue())
