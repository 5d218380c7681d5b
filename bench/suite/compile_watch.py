"""Which kernels MLX compiles after the daemon's warm-up, and what they cost the step that met them. On a GPU MLX
compiles a kernel on its first use (NVRTC) and keeps its PTX in MLX_PTX_CACHE_DIR, a file a kernel: started with
that folder empty, the files that appear during a step name what it compiled. The daemon's warm-up (engine/warmup.py)
runs first, each of its parts timed with the kernels it compiled; then the speculative bench's tasks (bench
speculative: a paragraph rewritten, a JSON record filled, free text; chat-templated) through one scheduler as a
daemon serving `--speculate` runs them, speculating and plain in turn, and every step slower than --slow ms is
printed with the kernels that appeared during it.

    MLX_PTX_CACHE_DIR=$(mktemp -d) python -m bench compile_watch --model PATH [--speculate ngram] [--depth 0]
                                   [--tasks rewrite,json,free] [--streams 1,16] [--max-tokens 96] [--slow 100]

An H100 with SmolLM2 Q4_1 and `--speculate ngram`, 16 rows (session 41): the warm-up took 269 s, of which the
verify steps 88 s and the prefill widths 109 s, nearly all of it seven quantized-matmul kernels (qmm_sm80 and
qmm_naive tiles of 16-64 rows, 4 and 8 bits) at ~25 s each; after it, rewrite, JSON and free text at 1 and 16 streams
compiled nothing and no step took over 100 ms.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlx.core as mx

from bench import common
from bench.suite.speculative import TASKS
from mlxd.engine import warmup
from mlxd.engine.request import FinalEvent, GenerationRequest, TokenEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer

# engine/warmup.py's parts, timed each (warm_up calls them by their module's names)
PARTS = ("_run", "_warm_up_verify_steps", "_warm_up_catch_up", "warm_up_prefill_widths", "warm_up_sampling",
         "warm_up_batch")


class KernelFolder:
    """The kernels MLX has compiled into its PTX cache folder, and those new since the last look."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen = self._names()

    def _names(self) -> set[str]:
        return {str(p.relative_to(self.folder)) for p in self.folder.rglob("*.ptx")}

    def new(self) -> list[str]:
        names = self._names()
        fresh, self._seen = sorted(names - self._seen), names
        return fresh


def short(kernel: str, width: int = 90) -> str:
    return kernel if len(kernel) <= width else kernel[:width - 3] + "..."


def timed_parts(kernels: KernelFolder, lines: list[list]) -> None:
    """Wrap warmup's parts so each call adds a line: the part, seconds, kernels compiled (nested calls of `_run`
    inside another part count in that part)."""
    depth = [0]
    for name in PARTS:
        original = getattr(warmup, name)

        def wrapped(*args, _original=original, _name=name, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    fresh = kernels.new()
                    lines.append([_name, time.perf_counter() - start, len(fresh),
                                  ", ".join(short(k, 40) for k in fresh[:3])])
        setattr(warmup, name, wrapped)


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--speculate", default="ngram", help="serve --speculate ('' for none)")
    p.add_argument("--depth", type=int, default=0, help="serve --speculate-depth (0: the model's default)")
    p.add_argument("--tasks", default="rewrite,json,free")
    p.add_argument("--streams", default="1")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--slow", type=float, default=100.0, help="print steps slower than this (ms)")
    args = p.parse_args(argv)
    if "MLX_PTX_CACHE_DIR" not in os.environ:
        raise SystemExit("set MLX_PTX_CACHE_DIR to an empty folder: its new files name the kernels compiled")
    common.reexec_with_blas(__name__, argv)
    kernels = KernelFolder(Path(os.environ["MLX_PTX_CACHE_DIR"]))
    loaded, tokenizer = load_model_and_tokenizer(common.resolve_model(args.model), args.dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    depth = runtime.speculation_depth(args.depth)
    streams = [int(s) for s in args.streams.split(",")]
    warm: list[list] = []
    timed_parts(kernels, warm)
    start = time.perf_counter()
    warmup.warm_up(runtime, speculate=args.speculate, speculate_depth=depth, batch_rows=max(streams))
    print(f"warm-up {time.perf_counter() - start:.1f} s on {mx.default_device()}")
    print(common.table(["warm-up part", "s", "kernels", "first kernels"], warm), flush=True)

    options = SchedulerOptions(2048, max_batch_size=max(streams), speculate=args.speculate, speculate_depth=depth)
    scheduler = Scheduler(runtime, options)
    widths: list[int] = []  # the widths of the steps the speculator timed (1: a plain step)
    if scheduler._speculator is not None:
        timed = scheduler._speculator.timed

        def timing(rows: int, length: int, seconds: float) -> None:
            widths.append(length)
            timed(rows, length, seconds)
        scheduler._speculator.timed = timing  # type: ignore[method-assign]
    slow: list[list] = []
    for round_ in range(args.rounds):
        for task in args.tasks.split(","):
            prompt = tokenizer.encode(tokenizer.apply_chat_template(TASKS[task]), add_special_tokens=False)
            for n in streams:
                for mode, speculation in (("speculative", None), ("plain", 0)):
                    case = f"round {round_ + 1} {task} x{n} {mode}"
                    for i in range(n):
                        scheduler.add(GenerationRequest(f"{case} {i}", prompt, SamplingParams(temperature=0.0),
                                                        max_tokens=args.max_tokens, speculation=speculation))
                    step = 0
                    while scheduler.has_work():
                        widths.clear()
                        began = time.perf_counter()
                        for request, event in scheduler.step():
                            if not isinstance(event, (TokenEvent, FinalEvent)):
                                raise RuntimeError(f"{request.request_id}: {event}")
                        ms = (time.perf_counter() - began) * 1e3
                        fresh = kernels.new()
                        if ms > args.slow or fresh:
                            slow.append([case, step, widths[-1] if widths else "-", ms, len(fresh),
                                         "; ".join(short(k) for k in fresh[:4])])
                        step += 1
                    print(f"{case}: {step} steps", flush=True)
    print(f"\nsteps slower than {args.slow:g} ms or compiling after the warm-up ({args.model}, "
          f"--speculate {args.speculate or 'none'} depth {depth})")
    print(common.table(["case", "step", "width", "ms", "kernels", "kernels compiled"], slow) if slow else "none")


if __name__ == "__main__":
    main()
