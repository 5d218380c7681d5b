"""What busy cores beside the worker cost its decode steps (issue 17): 16 free streams in-process, as
batch_inprocess runs them, with this thread pinned to one CPU and busy processes (a spin in C, no GIL shared)
pinned to (a) nothing, (b) that CPU's hyperthread sibling(s), (c) as many CPUs of other cores. Rounds interleaved;
decode tok/s and each condition's median ratio to none.

Why: on the H200's host a constrained step's mask fill, beside the worker's forward launch on other threads and
processes, slowed the launch itself (session 26: a fill spinning one core 2 ms a step took 16 streams from 1.14 to
0.63 of free, where the step's structure with a free fill cost nothing). Whether a busy sibling hyperthread, or
any busy core (clock, caches), does that decides where mask processes should run.

    python -m bench host_contention [--model PATH --streams 16 --new-tokens 128 --rounds 3 --busy N]
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx

from bench import common
from bench.suite.batch_inprocess import interleaved, run
from mlxd.engine.runtime import ModelRuntime
from mlxd.loading.model_source import load_model_and_tokenizer

SPIN = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


def cpu_list(text: str) -> set[int]:
    """A Linux CPU list ("0-3,8,10-11")."""
    out: set[int] = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def siblings(cpu: int) -> set[int]:
    """The CPUs sharing `cpu`'s core (its hyperthreads), itself included."""
    return cpu_list(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text())


def topology(cpus: set[int]) -> str:
    """`cpus` grouped by core."""
    cores = sorted({tuple(sorted(siblings(c) & cpus)) for c in cpus})
    return " ".join("{" + ",".join(map(str, core)) + "}" for core in cores)


@contextmanager
def busy(cpus: list[int]) -> Iterator[None]:
    """A spinning process pinned to each of `cpus` while inside."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN, str(c)]) for c in cpus]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--busy", type=int, default=3, help="busy processes on other cores (condition c)")
    args = p.parse_args(argv)
    mx.set_default_stream(mx.new_stream(mx.default_device()))
    loaded, tokenizer = load_model_and_tokenizer(common.resolve_model(args.model), args.dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    prompts = common.stream_prompts(runtime.vocab_size, args.streams, args.prompt_tokens)
    run(runtime, prompts, 16)  # warm-up at this batch size (MLX's own threads made before this one is pinned)
    allowed = os.sched_getaffinity(0)
    mine = min(allowed)
    os.sched_setaffinity(0, {mine})  # this thread (the worker's launches) on one CPU
    sibling = sorted(siblings(mine) & allowed - {mine})
    others = sorted(c for c in allowed if not siblings(c) & siblings(mine))[:args.busy]
    print(f"CPUs by core: {topology(allowed)}; this thread on CPU {mine}, its siblings {sibling or 'none'}; "
          f"other cores' CPUs {others}", flush=True)
    conditions = {"none": [], "sibling": sibling, f"{len(others)} other cores": others}
    conditions = {name: cpus for name, cpus in conditions.items() if name == "none" or cpus}

    def one(name: str) -> common.Row:
        with busy(conditions[name]):
            return run(runtime, prompts, args.new_tokens)

    interleaved("busy beside the worker", list(conditions), "none", args.rounds, one)


if __name__ == "__main__":
    main()
