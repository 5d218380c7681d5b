"""The thread a constrained step's CPU work runs on (engine/constrained_rows.py `tell_then_fill`) while the worker
launches the forward pass, and the one-shot results it hands back (`HandOff`).

A ThreadPoolExecutor and its Futures did this until session 40. A GPU's constrained step is bound by the host (a
1-row step of a random 1B is ~1.9 ms of host work), and the worker's side of the hand-off is on that path. Measured
on the 2-core CPU (a job handed over, 1 ms of the worker's own work, then both results read, as a step does): the
executor's submit and two Futures cost the worker ~30 us a step, this queue and one-shot locks ~4. On an H100
(random 1B, constrained streams in-process, 4 interleaved rounds): the executor ran at 0.956 of this at one stream
(rounds 0.92-1.06), 0.996 at 16.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class HandOff(Generic[T]):
    """A value (or the error raised instead) handed once from one thread to another: a lock held until it is set."""

    def __init__(self) -> None:
        self._ready = threading.Lock()
        self._ready.acquire()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._ready.release()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.release()

    def wait(self) -> None:
        """Until it is set or failed (raises nothing)."""
        with self._ready:
            pass

    def result(self) -> T:
        """The value, once set; the error, raised, if it failed."""
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set() gave a T


class MaskThread:
    """One daemon thread running the jobs handed to it in turn. It ends when this object is collected (its queue
    gets None), so a runner that goes leaves no thread behind, and at the interpreter's exit after the job in hand
    (as the executor's thread was joined): a job inside MLX or llguidance while the process tears down could abort
    it."""

    def __init__(self, name: str = "mlxd-masks") -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], HandOff[Any]] | None] = \
            queue.SimpleQueue()
        self._thread = threading.Thread(target=_serve, args=(self._jobs,), name=name, daemon=True)
        self._thread.start()
        _live.add(self)

    def __del__(self) -> None:
        self._jobs.put(None)

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread once the jobs handed to it are done (waiting up to `timeout` seconds)."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def submit(self, fn: Callable[..., T], *args: Any) -> HandOff[T]:
        """fn(*args) on the thread; its result (or what it raised) in the HandOff returned."""
        out: HandOff[T] = HandOff()
        self._jobs.put((fn, args, out))
        return out


_live: weakref.WeakSet[MaskThread] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for thread in list(_live):
        thread.stop()


def _serve(jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], HandOff[Any]] | None]) -> None:
    while (job := jobs.get()) is not None:
        fn, args, out = job
        try:
            value = fn(*args)
        except BaseException as error:  # handed to the worker, which raises it where it waits
            out.fail(error)
        else:
            out.set(value)
