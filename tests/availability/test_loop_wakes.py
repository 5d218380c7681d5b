"""The worker wakes the streams' readers on the event loop a batch at a time (service/loop.py Wakes): every
waiter is completed, and a burst of them costs the loop about one wake-up, not one each."""

from __future__ import annotations

import asyncio
import threading

from mlxd.service.loop import Wakes, wakes_for


def test_a_burst_of_waiters_from_another_thread_is_completed_with_one_wake_up():
    async def main() -> tuple[int, list[bool]]:
        loop = asyncio.get_running_loop()
        wakes = Wakes(loop)
        calls = 0
        original = loop.call_soon_threadsafe

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        waiters = [loop.create_future() for _ in range(16)]
        worker = threading.Thread(target=lambda: [wakes.add(w) for w in waiters])  # a step's puts, in one burst
        worker.start()
        worker.join()
        await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
        later = loop.create_future()  # a waiter after the batch ran schedules a wake of its own
        threading.Thread(target=wakes.add, args=(later,)).start()
        await asyncio.wait_for(later, timeout=5)
        return calls, [w.done() for w in waiters]

    calls, done = asyncio.run(main())
    assert all(done) and calls == 2


def test_each_loop_has_its_own_wakes():
    async def one() -> Wakes:
        loop = asyncio.get_running_loop()
        assert wakes_for(loop) is wakes_for(loop)
        return wakes_for(loop)

    assert asyncio.run(one()) is not asyncio.run(one())
