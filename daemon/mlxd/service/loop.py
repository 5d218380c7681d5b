"""Handing work to the event loop from other threads (the worker, preparation threads)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """loop.call_soon_threadsafe, except that a closed loop (the daemon is exiting, nobody waits any more) is not an
    error for the calling thread: the worker must never fail because a stream's loop is gone."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass
