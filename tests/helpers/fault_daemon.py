"""`mlxd` with a faulty model, for the process tests that need one (test code only; production has no hooks).

    python -m tests.helpers.fault_daemon [--fail-on-token ID] [--oom-on-token ID] [--stall-on-token ID:SECONDS]
        [--load-delay SECONDS] serve --model ... (any mlxd arguments)

It serves through mlxd's own CLI, with the worker's runtime factory replaced: the real model loads and warms up,
then its forward pass raises RuntimeError (naming the worker thread, so a test can tell the same thread serves
on), fails as MLX's CUDA allocator does when the device is full (--oom-on-token), or sleeps whenever its input holds
the chosen token. --load-delay holds the loading state that long first.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from mlxd.cli import main
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.worker import Worker, load_runtime


class FaultOnToken:
    """The model, except that a forward pass whose input holds `token_id` first runs `fault`."""

    def __init__(self, model: Any, token_id: int, fault: Callable[[], None]) -> None:
        self._model = model
        self._token_id = token_id
        self._fault = fault

    def __call__(self, inputs: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        if (inputs == self._token_id).any().item():
            self._fault()
        return self._model(inputs, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


# What MLX's CUDA backend raised when three 8B daemons shared an H100 (session 39).
OUT_OF_MEMORY = "cudaMallocAsync(&data, size, stream) failed: out of memory"


def faulty_loader(fail_on: int | None, stall_on: tuple[int, float] | None, load_delay: float,
                  oom_on: int | None = None) -> Callable[[Worker], ModelRuntime]:
    def load(worker: Worker) -> ModelRuntime:
        time.sleep(load_delay)
        runtime = load_runtime(worker)  # warm-up runs on the healthy model
        if fail_on is not None:
            def fail() -> None:
                raise RuntimeError(f"injected fault: token {fail_on} on thread {threading.get_native_id()}")
            runtime.model = FaultOnToken(runtime.model, fail_on, fail)
        if oom_on is not None:
            def full() -> None:
                raise RuntimeError(OUT_OF_MEMORY)
            runtime.model = FaultOnToken(runtime.model, oom_on, full)
        if stall_on is not None:
            token, seconds = stall_on
            runtime.model = FaultOnToken(runtime.model, token, lambda: time.sleep(seconds))
        return runtime
    return load


def _stall(text: str) -> tuple[int, float]:
    token, seconds = text.split(":")
    return int(token), float(seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="fault_daemon")
    parser.add_argument("--fail-on-token", type=int)
    parser.add_argument("--oom-on-token", type=int)
    parser.add_argument("--stall-on-token", type=_stall)
    parser.add_argument("--load-delay", type=float, default=0.0)
    faults, mlxd_args = parser.parse_known_args()
    sys.exit(main(mlxd_args, load=faulty_loader(faults.fail_on_token, faults.stall_on_token, faults.load_delay,
                                                 faults.oom_on_token)))
