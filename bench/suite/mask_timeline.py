"""Where a constrained decode step's time goes across its two threads: for `batch_inprocess --constrained --timeline`
(and without --constrained the parts a free step shares with it, to compare part by part). The functions a
constrained step calls (the runner's, engine/constrained_rows.py's and engine/mask_thread.py's module globals)
are wrapped for the run (and put back after): the mask thread's two jobs (telling the constraints the step before's
tokens, filling this step's masks), the worker's forward launch (`mx.async_eval` of the logits) and the worker's wait
for the masks after it are timed; per step we print how long each took, how late the mask thread started after the
launch began and how long after the launch returned the masks were ready.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlx.core as mx

import mlxd.engine.constrained_rows as rows_module
import mlxd.engine.mask_thread as mask_thread
import mlxd.engine.queued_step as queued_step
import mlxd.engine.runner as runner_module
from mlxd.engine.mask_thread import HandOff


class _Timings:
    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = defaultdict(list)  # label -> ms, one per step
        self.launches: list[tuple[float, float]] = []       # the worker's forward launches: (start, end)
        self.jobs: list[tuple[float, float]] = []           # the mask thread's jobs: (start, end)
        self.lock = threading.Lock()

    def add(self, label: str, ms: float) -> None:
        with self.lock:
            self.spans[label].append(ms)

    def paired(self) -> dict[str, list[float]]:
        """Each step's launch beside its mask job (one of each a constrained step, in order): how late the job
        started after the launch began, and how long the worker waited for it after the launch returned."""
        pairs = list(zip(self.launches, self.jobs))
        return {"mask thread: starts after the launch began": [(j[0] - a[0]) * 1e3 for a, j in pairs],
                "mask thread: masks ready after the launch returned": [max(0.0, j[1] - a[1]) * 1e3
                                                                        for a, j in pairs]}


class _TimedMx:
    """mlx.core as the runner sees it, with the constrained step's forward launch timed."""

    def __init__(self, timings: _Timings) -> None:
        self._timings = timings

    def __getattr__(self, name: str) -> Any:
        return getattr(mx, name)

    def async_eval(self, *arrays: Any) -> None:
        caller = sys._getframe(1).f_code.co_name
        start = time.perf_counter()
        mx.async_eval(*arrays)
        end = time.perf_counter()
        if caller == "_constrained_step":
            self._timings.launches.append((start, end))
            self._timings.add("worker: launch the forward (async_eval)", (end - start) * 1e3)
        elif caller == "_sample":  # a free step's: its forward is launched here too
            self._timings.add("worker: queue the sampling (async_eval)", (end - start) * 1e3)


def _timed(timings: _Timings, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timings.add(label, (time.perf_counter() - start) * 1e3)
    return wrapper


def _timed_handoff(timings: _Timings, label: str) -> type:
    """HandOff with the worker's wait for it in a constrained step timed: the runner's (the step before's tokens,
    told to their constraints on the mask thread) or the mask thread's own (the masks)."""
    class TimedHandOff(HandOff[Any]):
        def result(self) -> Any:
            if sys._getframe(1).f_code.co_name != "_constrained_step":
                return super().result()
            start = time.perf_counter()
            try:
                return super().result()
            finally:
                timings.add(label, (time.perf_counter() - start) * 1e3)
    return TimedHandOff


def _cycled(timings: _Timings, step: Callable[..., Any]) -> Callable[..., Any]:
    """Runner.step timed whole, and from one call's start to the next's (what a step costs the batch)."""
    started = [0.0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        if started[0]:
            timings.add("worker: a step's call to the next call", (start - started[0]) * 1e3)
        started[0] = start
        try:
            return step(*args, **kwargs)
        finally:
            timings.add("worker: a whole step call (Runner.step)", (time.perf_counter() - start) * 1e3)
    return wrapper


@contextmanager
def timeline() -> Iterator[_Timings]:
    """The runner's constrained step timed while inside; yields the timings (see `table`)."""
    timings = _Timings()
    originals: dict[tuple[Any, str], Any] = {}  # (module or class, name) -> what it held before the run
    tell_then_fill = runner_module.tell_then_fill

    def tell_then_fill_timed(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return tell_then_fill(*args)
        finally:
            end = time.perf_counter()
            timings.jobs.append((start, end))
            timings.add("mask thread: whole job", (end - start) * 1e3)

    def replace(owner: Any, name: str, value: Any) -> None:
        originals[(owner, name)] = getattr(owner, name)
        setattr(owner, name, value)

    replace(runner_module, "mx", _TimedMx(timings))
    replace(runner_module, "HandOff", _timed_handoff(timings, "worker: waits for the step before's tokens, told"))
    replace(runner_module, "tell_then_fill", tell_then_fill_timed)
    # What tell_then_fill calls, where it looks them up (the runner's own flush and verify steps call
    # tell_constraints through the runner's name for it, which stays as it is).
    replace(rows_module, "tell_constraints",
            _timed(timings, "mask thread: tell the tokens", rows_module.tell_constraints))
    replace(rows_module, "fill_step_masks", _timed(timings, "mask thread: fill the masks", rows_module.fill_step_masks))
    replace(mask_thread, "HandOff", _timed_handoff(timings, "worker: waits for the masks after the launch"))
    # The parts every decode step has, constrained or free, so the two runs' tables compare part by part.
    replace(runner_module.Runner, "_forward_step",
            _timed(timings, "worker: build the forward's graph", runner_module.Runner._forward_step))
    replace(queued_step.QueuedStep, "read",
            _timed(timings, "read the step before (device wait; a constrained step's on the mask thread)",
                   queued_step.QueuedStep.read))
    replace(runner_module.Runner, "step", _cycled(timings, runner_module.Runner.step))
    try:
        yield timings
    finally:
        for (owner, name), value in originals.items():
            setattr(owner, name, value)


def table(timings: _Timings) -> list[list]:
    """label, steps, median ms, p90 ms: one line per timed part."""
    lines = []
    for label, values in {**timings.spans, **timings.paired()}.items():
        if not values:  # a free step's run has no mask jobs to pair
            continue
        ordered = sorted(values)
        lines.append([label, len(values), statistics.median(values), ordered[int(0.9 * (len(ordered) - 1))]])
    return lines
