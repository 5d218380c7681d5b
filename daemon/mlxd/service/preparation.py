"""Request preparation off the event loop and off the worker, a bounded number at a time.

Tokenizing, rendering chat templates, compiling stop strings and decoding images run on a small pool of threads.
Pure-Python work there still competes with the worker and the event loop for the GIL (sixteen stop-string builds at
once paused every stream for over a second), so at most `slots` jobs run at once; the rest wait on the loop, where a
waiting job whose client leaves simply disappears. A running job checks its request's CancelToken between stages
(`check`) and stops there; its slot is freed only when its thread is done with it, so the bound holds even for jobs
whose client already left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

from mlxd.engine.request import CancelToken
from mlxd.errors import Cancelled
from mlxd.service.loop import call_soon

T = TypeVar("T")


def check(cancel: CancelToken) -> None:
    """Called between stages of a preparation: stop here (raise Cancelled) when the request was cancelled."""
    if cancel.is_set:
        raise Cancelled(f"cancelled while being prepared ({cancel.reason})")


class Preparation:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._pool = futures.ThreadPoolExecutor(max_workers=slots, thread_name_prefix="prepare")
        self._free: asyncio.Semaphore | None = None   # made on the event loop, at the first call
        self.running = 0                                # jobs holding a slot now

    async def run(self, job: Callable[[], T], cancel: CancelToken) -> T:
        loop = asyncio.get_running_loop()
        if self._free is None:
            self._free = asyncio.Semaphore(self.slots)
        free = self._free
        await free.acquire()
        self.running += 1

        def release() -> None:
            self.running -= 1
            free.release()
        try:
            check(cancel)
            future = self._pool.submit(job)
        except BaseException:
            release()
            raise
        future.add_done_callback(lambda _: call_soon(loop, release))
        # If this coroutine is cancelled (the client left), the thread finishes its current stage and stops at the
        # next check, since the caller cancels the token.
        return await asyncio.wrap_future(future)

