"""A burst of short prompts arriving together beside a stream already decoding: how soon the burst's streams have
their first tokens, and what their admission costs the stream already there. In-process (one Scheduler on this
thread, as the worker drives it), a step's prefill chunk shared by the short prompts (scheduler.PACKED_PREFILLS)
against one prompt's prefill a step, their rounds interleaved in one process.

    python -m bench admission [--model smollm2|PATH --streams 16 --prompt-tokens 64 --new-tokens 32 --rounds 3]

Greedy, ignore_eos. Reported per mode (medians of the rounds): the burst's mean and last first token (ms from
its arrival), the whole burst's wall time, and the longest gap between two tokens of the stream already decoding
while the burst was admitted (until each burst stream had its first token).
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx

from bench import common
from mlxd.engine.request import ErrorEvent, Event, FinalEvent, GenerationRequest, TokenEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer

MODES = {"packed": "mlxd.engine.scheduler.PACKED_PREFILLS=True",
         "one a step": "mlxd.engine.scheduler.PACKED_PREFILLS=False"}


def burst(runtime: ModelRuntime, prompts: list[list[int]], new_tokens: int, chunk: int) -> common.Row:
    """One stream decoding, then `prompts` arriving together; every request served to its end."""
    pipelined = mx.default_device().type != mx.cpu  # as the daemon's worker sets it (engine/worker.py)
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=chunk, max_batch_size=len(prompts) + 1,
                                                    pipelined=pipelined))
    greedy = SamplingParams(temperature=0.0)
    resident = GenerationRequest("resident", prompts[0][::-1], greedy, max_tokens=1 << 20, ignore_eos=True)
    scheduler.add(resident)
    seen: list[float] = []  # when each of the resident's token events came
    while len(seen) < 4:
        seen += [time.perf_counter() for request, event in _events(scheduler) if request is resident]
    requests = [GenerationRequest(f"b{i}", p, greedy, max_tokens=new_tokens, ignore_eos=True)
                for i, p in enumerate(prompts)]
    arrived = time.perf_counter()
    for request in requests:
        scheduler.add(request)
    firsts: dict[str, float] = {}
    gap, last = 0.0, seen[-1]
    ended = 0
    while ended < len(requests):
        for request, event in _events(scheduler):
            now = time.perf_counter()
            if request is resident and len(firsts) < len(requests):
                gap, last = max(gap, now - last), now
            elif request is not resident and isinstance(event, TokenEvent):
                firsts.setdefault(request.request_id, now)
            ended += request is not resident and isinstance(event, FinalEvent)
    done = time.perf_counter()
    resident.cancel.cancel("the burst is served")
    while scheduler.has_work():
        _events(scheduler)
    times = [t - arrived for t in firsts.values()]
    return {"mean_first_ms": sum(times) / len(times) * 1e3, "last_first_ms": max(times) * 1e3,
            "burst_s": done - arrived, "resident_gap_ms": gap * 1e3}


def _events(scheduler: Scheduler) -> list[tuple[GenerationRequest, Event]]:
    routed = scheduler.step()
    for _request, event in routed:
        if isinstance(event, ErrorEvent):
            raise event.error
    return routed


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--streams", type=int, default=16, help="the burst's streams")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prefill-chunk", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    common.reexec_with_blas(__name__, argv)
    _main(args)


def _main(args: argparse.Namespace) -> None:
    mx.set_default_stream(mx.new_stream(mx.default_device()))
    loaded, tokenizer = load_model_and_tokenizer(common.resolve_model(args.model), args.dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    prompts = common.stream_prompts(runtime.vocab_size, args.streams, args.prompt_tokens)

    def one(mode: str, _case: str, _round: int) -> common.Row:
        with common.patched(MODES[mode]):
            return burst(runtime, prompts, args.new_tokens, args.prefill_chunk)

    one("packed", "", 0)  # warm-up: every shape the rounds meet
    rows = common.alternate(args.rounds, ["burst"], list(MODES), one)
    keys = ["mean_first_ms", "last_first_ms", "burst_s", "resident_gap_ms"]
    print(f"{args.streams} streams of {args.prompt_tokens}-token prompts arriving together beside one decoding, "
          f"{args.new_tokens} new tokens each, prefill chunk {args.prefill_chunk} (medians of {args.rounds} rounds):")
    print(common.table(["mode", "mean first token ms", "last first token ms", "burst s",
                        "longest gap of the stream decoding ms"],
                       [[mode, *(common.median(rows, key, contender=mode) for key in keys)] for mode in MODES]))
    print("packed / one a step (medians of the rounds' ratios): mean first token "
          f"{common.median_ratio(rows, 'mean_first_ms', 'packed', 'one a step'):.3f}, last first token "
          f"{common.median_ratio(rows, 'last_first_ms', 'packed', 'one a step'):.3f}, longest gap "
          f"{common.median_ratio(rows, 'resident_gap_ms', 'packed', 'one a step'):.3f}")
