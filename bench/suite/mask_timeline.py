"""Where a constrained decode step's time goes across its two threads: for `batch_inprocess --constrained
--timeline`. The runner's module globals that a constrained step calls, and its `_constrained_step` and `_settle`,
are wrapped for the run (and put back after): the mask thread's two jobs (telling the constraints the step
before's tokens, filling this step's masks), the worker's forward launch (`mx.async_eval` of the logits), the time
between a step's return and the next call's `_settle` (what the caller does between steps, which the fill also
overlaps) and the worker's wait there for the masks are timed; per step we print how long each took, how late the
mask thread started after the launch began and how long after the launch returned the masks were ready.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import mlx.core as mx

import mlxd.engine.runner as runner_module


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
        elif caller == "_sample":
            self._timings.add("worker: queue the sampling (async_eval)", (end - start) * 1e3)


def _timed(timings: _Timings, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():  # a flush, not a constrained step's job
            return function(*args, **kwargs)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timings.add(label, (time.perf_counter() - start) * 1e3)
    return wrapper


@contextmanager
def timeline() -> Iterator[_Timings]:
    """The runner's constrained step timed while inside; yields the timings (see `table`)."""
    timings = _Timings()
    saved = {name: getattr(runner_module, name) for name in ("mx", "_tell_then_fill", "tell_constraints",
                                                              "fill_step_masks")}
    step, settle = runner_module.Runner._constrained_step, runner_module.Runner._settle
    returned = [0.0]

    def constrained_step(self: Any, *args: Any) -> Any:
        try:
            return step(self, *args)
        finally:
            returned[0] = time.perf_counter()

    def settle_timed(self: Any) -> None:
        unsampled = self._unsampled
        if unsampled is not None:
            start = time.perf_counter()
            timings.add("worker: between a step's return and the next call", (start - returned[0]) * 1e3)
            futures.wait([unsampled.masks])
            timings.add("worker: waits for the masks at the next call", (time.perf_counter() - start) * 1e3)
        settle(self)

    def tell_then_fill(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return saved["_tell_then_fill"](*args)
        finally:
            end = time.perf_counter()
            timings.jobs.append((start, end))
            timings.add("mask thread: whole job", (end - start) * 1e3)

    runner_module.mx = _TimedMx(timings)  # type: ignore[assignment]
    runner_module._tell_then_fill = tell_then_fill  # type: ignore[assignment]
    runner_module.tell_constraints = _timed(timings, "mask thread: tell the tokens", saved["tell_constraints"])
    runner_module.fill_step_masks = _timed(timings, "mask thread: fill the masks", saved["fill_step_masks"])
    runner_module.Runner._constrained_step = constrained_step  # type: ignore[method-assign]
    runner_module.Runner._settle = settle_timed  # type: ignore[method-assign]
    try:
        yield timings
    finally:
        for name, value in saved.items():
            setattr(runner_module, name, value)
        runner_module.Runner._constrained_step, runner_module.Runner._settle = step, settle  # type: ignore


def table(timings: _Timings) -> list[list]:
    """label, steps, median ms, p90 ms: one line per timed part."""
    lines = []
    for label, values in {**timings.spans, **timings.paired()}.items():
        ordered = sorted(values)
        lines.append([label, len(values), statistics.median(values), ordered[int(0.9 * (len(ordered) - 1))]])
    return lines
