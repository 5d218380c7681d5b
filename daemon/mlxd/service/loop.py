"""Handing work to the event loop from other threads (the worker, preparation threads)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Any


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """loop.call_soon_threadsafe, except that a closed loop (the daemon is exiting, nobody waits any more) is not an
    error for the calling thread: the worker must never fail because a stream's loop is gone."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def resolve(waiter: asyncio.Future[None]) -> None:
    """Complete a waiter unless it is done already (completed by someone else, or cancelled with its reader)."""
    if not waiter.done():
        waiter.set_result(None)


class Wakes:
    """Futures another thread completes on one event loop, a batch at a time: the first waiter added schedules the
    loop's callback (one call_soon_threadsafe), those added before it runs join it.

    Why: each call_soon_threadsafe writes a byte to the loop's self-pipe, which wakes the loop's thread, which takes
    the GIL; the caller, the worker, then waits for it back. On an H100 host serving 16 gRPC streams (session 50,
    `bench gil_waits`) the worker spent ~9 % of its time so, waiting for the GIL right after `_write_to_self`: 16
    wakes a step, one for each stream's reader. A step's events now wake the loop about once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._waiters: list[asyncio.Future[None]] = []

    def add(self, waiter: asyncio.Future[None]) -> None:
        """Complete `waiter` on the loop soon (from any thread)."""
        with self._lock:
            self._waiters.append(waiter)
            if len(self._waiters) > 1:
                return  # the loop's callback is scheduled and has not run yet: it completes this one too
        call_soon(self._loop, self._run)

    def _run(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            resolve(waiter)


_wakes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wakes] = weakref.WeakKeyDictionary()


def wakes_for(loop: asyncio.AbstractEventLoop) -> Wakes:
    """The loop's Wakes (call on the loop's thread)."""
    wakes = _wakes.get(loop)
    if wakes is None:
        wakes = _wakes[loop] = Wakes(loop)
    return wakes
