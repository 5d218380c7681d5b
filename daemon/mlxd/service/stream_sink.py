"""One request's events, from the worker thread to the coroutine that streams them on the event loop.

The worker calls `put` (it never blocks: a lock held for a few list operations) and reads `backlog` to pause a
row whose client stopped reading (backpressure, --max-stream-backlog). The reader awaits `take` on the loop. The
sink has a bound of its own, `limit`, should events keep coming anyway: beyond it the request is cancelled, further
token events are dropped and the call is abandoned, so a stream nobody reads holds at most `limit` events.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable

from mlxd.engine.request import CancelToken, ErrorEvent, Event, TokenEvent
from mlxd.errors import Unavailable
from mlxd.service.loop import call_soon, resolve, wakes_for

log = logging.getLogger(__name__)

ALIVE_POLL_SECONDS = 1.0   # how often a reader waiting for events checks that the worker thread still runs


class StreamSink:
    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, cancel: CancelToken, request_id: str,
                 abandon: Callable[[], None] = lambda: None) -> None:
        self._loop = loop
        self._wakes = wakes_for(loop)   # the reader woken with the other streams' of the step (service/loop.py)
        self._limit = limit
        self._cancel = cancel
        self._request_id = request_id
        self._abandon = abandon     # called on the loop when the limit is passed
        self._lock = threading.Lock()
        self._events: collections.deque[Event] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._put = 0      # written by the worker thread only
        self._taken = 0    # written by the event loop only
        self._overflowed = False

    # -- the worker's side ------------------------------------------------------------------------------------

    def put(self, event: Event) -> None:
        with self._lock:
            if self._overflowed and isinstance(event, TokenEvent):
                return
            self._events.append(event)
            self._put += 1
            overflow = not self._overflowed and self._put - self._taken > self._limit
            self._overflowed |= overflow
            waiter, self._waiter = self._waiter, None
        if overflow:
            log.warning("request %r: %d events not taken; the client stopped reading, so it is cancelled",
                        self._request_id, self._limit)
            self._cancel.cancel("the client stopped reading")
            call_soon(self._loop, self._abandon)
        if waiter is not None:
            self._wakes.add(waiter)

    def backlog(self) -> int:
        """Events put and not yet taken by the reader."""
        return self._put - self._taken

    # -- the reader's side (the event loop) -------------------------------------------------------------------

    async def take(self, worker_alive: Callable[[], bool]) -> list[Event]:
        """Every event put so far (at least one), in order; waits for the first."""
        while True:
            with self._lock:
                if self._events:
                    events = list(self._events)
                    self._events.clear()
                    self._taken += len(events)
                    return events
                waiter = self._waiter = self._loop.create_future()
            # A timer of its own, not asyncio.wait's timeout: ~13 us less of the loop's time (and GIL) a wait, one
            # per token per stream on the 2-core VM. Woken with no event: the timer's; is the worker still there?
            timer = self._loop.call_later(ALIVE_POLL_SECONDS, resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
            if not self._events and not worker_alive():
                return [ErrorEvent(Unavailable("the MLX worker thread is gone"))]
