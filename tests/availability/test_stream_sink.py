"""A stream's reader on the event loop (service/stream_sink.py StreamSink.take): woken by the worker's events from
another thread, and told the worker is gone when no event comes and its thread has ended."""

from __future__ import annotations

import asyncio
import threading

from mlxd.engine.request import CancelToken, ErrorEvent, TokenEvent
from mlxd.errors import Unavailable
from mlxd.service import stream_sink
from mlxd.service.stream_sink import StreamSink


def test_the_reader_takes_the_events_another_thread_puts_in_order():
    async def main() -> list[list[str]]:
        sink = StreamSink(asyncio.get_running_loop(), 100, CancelToken(), "r")
        taken: list[list[str]] = []
        worker = threading.Timer(0.05, lambda: [sink.put(TokenEvent(t, [i])) for i, t in enumerate("abc")])
        worker.start()
        while sum(len(t) for t in taken) < 3:
            taken.append([e.text for e in await sink.take(lambda: True) if isinstance(e, TokenEvent)])
        return taken

    taken = asyncio.run(main())
    assert [t for events in taken for t in events] == ["a", "b", "c"]


def test_a_reader_waiting_on_a_worker_that_is_gone_is_told_so(monkeypatch):
    monkeypatch.setattr(stream_sink, "ALIVE_POLL_SECONDS", 0.02)

    async def main() -> tuple[list[object], int]:
        loop = asyncio.get_running_loop()
        sink = StreamSink(loop, 100, CancelToken(), "r")
        checks = 0

        def alive() -> bool:
            nonlocal checks
            checks += 1
            return checks < 3   # the worker ends after the reader's second look

        events = await asyncio.wait_for(sink.take(alive), timeout=5)
        return list(events), checks

    events, checks = asyncio.run(main())
    assert checks == 3 and len(events) == 1 and isinstance(events[0], ErrorEvent)
    assert isinstance(events[0].error, Unavailable)
