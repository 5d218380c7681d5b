"""Where each thread of a daemon serving N streams over gRPC spends its time, free streams against constrained ones
(issue 17): py-spy samples every thread of the daemon, idle ones too, with native frames, while the load runs.
Each sample is put to a thread's role by the Python frames in its stack (the worker, the mask thread, the service's
event loop, others) and to a state by its innermost frames: waiting for the GIL (`take_gil`), blocked (a lock, a
poll, a condition variable), or running (Python, or native code such as MLX's launch).

Why: in one process 16 constrained streams ran at 0.90-0.98 of free ones on an H100 (session 49), over gRPC at
0.82-0.85; the service's event loop, the mask thread and the worker share one GIL, so a constrained step's extra
Python may cost the worker waits for the GIL that only gRPC's load shows. This says how long the worker waits.

    python -m bench gil_waits --model PATH [--streams 16 --new-tokens 256 --seconds 8 --mask-processes 3]
                              [--py-spy /tmp/site/bin/py-spy]

A second table says where the worker's samples fall: its innermost line of the daemon's own code (a line of
engine/runner.py, say, where it launches or waits) and the state there, the lines with the most samples of each
load (session 51 read it so by hand: the GIL taken back after the constrained step's short sampling launch).

py-spy attaches to the daemon (`record --pid`; native stacks need it to pause the daemon for each sample, 100 a
second, which slows free and constrained loads alike), which needs ptrace rights over it (root, or
/proc/sys/kernel/yama/ptrace_scope 0).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from bench import common
from bench.daemon import Daemon
from bench.suite.constrained_decode import constraint, streams
from mlxd_client import Client

LINES = 8   # the worker's lines shown per load

# The daemon's threads by name (py-spy's raw lines begin "thread (TID): NAME;"), the rest put under "other".
ROLES = {"mlx-worker": "worker", "mlxd-masks": "mask thread", "MainThread": "event loop"}
GIL_WAIT = ("take_gil", "PyEval_RestoreThread", "PyEval_AcquireThread", "PyGILState_Ensure")
# Waiting for the GIL shows, where CPython's take_gil is not named (a stripped or inlined build), as a timed wait on
# a condition variable right under the C function that had let the GIL go (`time_sleep`, `select_epoll_poll_impl`,
# a nanobind call into MLX). Python's own locks wait elsewhere (PyThread_acquire_lock), as do gRPC's threads.
TIMED_WAIT = "pthread_cond_timedwait"
NOT_THE_GIL = ("PyThread_acquire_lock", "cygrpc", "libgrpc", "gpr_")
BLOCKED = ("pthread_cond_wait", "pthread_cond_timedwait", "PyThread_acquire_lock", "epoll_wait", "clock_nanosleep",
           "futex", "sem_wait", "sem_timedwait", "poll (", "select (", "__libc_recv", "__libc_read", "accept")


def classify(stack: str) -> tuple[str, str]:
    """(role, state) of one sampled stack (py-spy's raw format, frames outermost first, ';'-separated): its
    thread's role by name; waiting for the GIL where `take_gil` (or, where it is not named, the timed wait under
    the call that let the GIL go) is among its innermost frames, blocked where another wait (a condition variable,
    a lock, a poll, a sleep) is, else running (Python or native code)."""
    head, _, _ = stack.partition(";")
    name = head.split(": ", 1)[-1]
    role = ROLES.get(name, "other")
    frames = stack.split(";")
    innermost = frames[-4:]
    if any(mark in frame for frame in innermost for mark in GIL_WAIT):
        return role, "GIL wait"
    timed = [i for i in range(max(1, len(frames) - 3), len(frames)) if TIMED_WAIT in frames[i]]
    if timed and not any(mark in frames[timed[-1] - 1] for mark in NOT_THE_GIL):
        return role, "GIL wait"
    if any(mark in frame for frame in innermost for mark in BLOCKED):
        return role, "blocked"
    return role, "running"


def samples(raw: Path) -> Iterator[tuple[str, str, str, int]]:
    """(stack, role, state, count) of each line of py-spy's raw output (one stack and its count a line)."""
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield (stack, *classify(stack), int(count))


def summarize(raw: Path) -> dict[str, dict[str, int]]:
    """Samples per role and state."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for _, role, state, count in samples(raw):
        counts[role][state] += count
    return counts


def worker_lines(raw: Path) -> dict[tuple[str, str], int]:
    """The worker's samples by (its innermost frame of the daemon's code, e.g. "Runner.step (engine/runner.py:205)",
    and the sample's state)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for stack, role, state, count in samples(raw):
        if role == "worker":
            own = [frame for frame in stack.split(";") if "(mlxd/" in frame]
            counts[(own[-1].replace("(mlxd/", "(") if own else "-", state)] += count
    return counts


def load(addr: str, prompts: list[list[int]], new_tokens: int, constrained: bool, seconds: float) -> int:
    """Rounds of the streams, back to back, until `seconds` have passed (one at least): the rounds run."""
    rounds, until = 0, time.monotonic() + seconds
    chosen = constraint("strings")
    while not rounds or time.monotonic() < until:
        streams(addr, prompts, new_tokens, [constrained] * len(prompts), chosen)
        rounds += 1
    return rounds


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--seconds", type=float, default=8.0, help="sampled load per kind")
    p.add_argument("--mask-processes", type=int, default=3)
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/site/bin/py-spy")
    common.add_out_arg(p, "gil_waits")
    args = p.parse_args(argv)
    model = common.resolve_model(args.model)
    serve = ["--dtype", args.dtype, "--max-batch-size", str(args.streams), "--mask-processes",
             str(args.mask_processes)]
    rows, lines = [], []
    with Daemon(model, args.out / "daemon", *serve) as daemon:
        with Client(daemon.addr) as client:
            vocab = client.model_info().vocab_size
        for salt, kind in enumerate(("warm-up", "free", "constrained", "free", "constrained")):
            prompts = common.stream_prompts(vocab, args.streams, args.prompt_tokens, salt=salt)
            if kind == "warm-up":
                load(daemon.addr, prompts, 32, True, 0.0)
                continue
            raw = args.out / f"{salt}-{kind}.txt"
            with open(args.out / f"{salt}-py-spy.log", "wb") as log:
                spy = subprocess.Popen([args.py_spy, "record", "--pid", str(daemon.proc.pid), "--native", "--idle",
                                        "--threads", "--rate", "100", "--format", "raw",
                                        "--duration", str(int(args.seconds)), "--output", str(raw)],
                                       stdout=subprocess.DEVNULL, stderr=log)
                started = time.perf_counter()
                rounds = load(daemon.addr, prompts, args.new_tokens, kind == "constrained", args.seconds)
                spy.wait(timeout=120)
            counts = summarize(raw) if raw.exists() else {}
            for role in sorted(counts):
                total = sum(counts[role].values())
                rows.append([kind, role, total] + [f"{100 * counts[role][s] / total:.1f}"
                                                   for s in ("running", "GIL wait", "blocked")])
            where = worker_lines(raw) if raw.exists() else {}
            total = sum(where.values()) or 1
            lines += [[kind, frame, state, f"{100 * n / total:.1f}"]
                      for (frame, state), n in sorted(where.items(), key=lambda item: -item[1])[:LINES]]
            print(f"{kind}: {rounds} rounds in {time.perf_counter() - started:.1f} s; {raw}", flush=True)
    print(common.table(["load", "worker's innermost line", "state", "% of its samples"], lines))
    print(common.table(["load", "thread", "samples", "running %", "GIL wait %", "blocked %"], rows))


if __name__ == "__main__":
    main()
