"""The worker thread on a fake model: a failure ends only what it touched and the thread goes on; if the thread
ends anyway every live stream learns it at once; cancelled requests free their queue slot."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mlxd.engine.request import ErrorEvent, FinalEvent, GenerationRequest, TokenEvent
from mlxd.engine.scheduler import Scheduler
from mlxd.engine.worker import Worker, WorkerOptions, WorkerState
from mlxd.errors import InternalError, ResourceExhausted, Unavailable
from mlxd.generation.params import SamplingParams
from tests.helpers.fakes import FakeModel, fake_runtime

FAIL, STALL, FATAL = 40, 41, 42


@pytest.fixture
def worker():
    workers = []

    def start(model: Callable[[], FakeModel] = FakeModel, **options) -> Worker:
        # The model is made on the worker thread: MLX arrays belong to the thread whose stream made them.
        w = Worker(WorkerOptions(Path("fake"), **options), load=lambda _: fake_runtime(model()))
        w.start()
        w.wait_ready(30)
        workers.append(w)
        return w
    yield start
    for w in workers:
        w.cancel_all("test over")
        w.stop()


def _request(name: str, prompt: list[int], n: int = 8) -> GenerationRequest:
    return GenerationRequest(name, prompt, SamplingParams(temperature=0.0), max_tokens=n, ignore_eos=True)


def _end(request: GenerationRequest, timeout: float = 30) -> FinalEvent | ErrorEvent:
    while True:
        event = request.events.get(timeout=timeout)
        if not isinstance(event, TokenEvent):
            return event


def test_a_failing_request_ends_alone_and_the_thread_goes_on(worker):
    w = worker(lambda: FakeModel(fail_on=FAIL))
    bad, good = _request("bad", [1, FAIL, 2, 3]), _request("good", [1, 2, 3])
    w.submit(bad)
    assert isinstance(_end(bad).error, InternalError)
    w.submit(good)
    assert isinstance(_end(good), FinalEvent)
    assert w.is_alive() and w.state is WorkerState.SERVING and w.live_count() == 0


def test_a_scheduler_bug_ends_the_requests_it_held_and_the_thread_goes_on(worker, monkeypatch):
    w = worker()
    step, failures = Scheduler.step, []

    def step_once_broken(self):
        if not failures:
            failures.append(1)
            raise KeyError("a scheduler bug")
        return step(self)
    monkeypatch.setattr(Scheduler, "step", step_once_broken)
    first = _request("first", [1, 2, 3])
    w.submit(first)
    assert isinstance(_end(first).error, InternalError)
    second = _request("second", [1, 2, 3])
    w.submit(second)
    assert isinstance(_end(second), FinalEvent) and w.is_alive()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's end, on purpose
def test_when_the_thread_ends_anyway_every_live_stream_gets_unavailable_at_once(worker):
    w = worker(lambda: FakeModel(fatal_on=FATAL, stall_on=(STALL, 1.0)), max_batch_size=1)
    waiting = [_request(f"w{i}", [1, 2, 3], n=100) for i in range(3)]
    fatal = _request("fatal", [1, 2, FATAL])
    w.submit(fatal)
    for request in waiting:
        w.submit(request)
    for request in [fatal, *waiting]:
        event = _end(request, timeout=10)
        assert isinstance(event, ErrorEvent) and isinstance(event.error, Unavailable), event
    w.stop()
    assert not w.is_alive() and w.state is WorkerState.FAILED


def test_cancelled_waiting_requests_free_their_queue_slot(worker):
    w = worker(lambda: FakeModel(stall_on=(STALL, 0.5)), max_batch_size=1, max_queue=1)
    busy = _request("busy", [1, 2, STALL], n=4)
    w.submit(busy)
    queued = _request("queued", [1, 2, 3])
    w.submit(queued)
    with pytest.raises(ResourceExhausted):
        w.submit(_request("refused", [1, 2, 3]))
    queued.cancel.cancel("client went away")
    later = _request("later", [1, 2, 3])
    w.submit(later)  # the cancelled one holds no slot, though the worker has not reached it yet
    for request in (busy, queued, later):
        assert isinstance(_end(request), FinalEvent)


def test_the_request_id_is_free_before_the_last_event_arrives(worker):
    w = worker()
    seen: queue.SimpleQueue[bool] = queue.SimpleQueue()
    request = _request("same-id", [1, 2, 3])

    class Probe:
        def put(self, event):
            if isinstance(event, FinalEvent):
                seen.put(w.cancel("same-id"))  # the id is no longer live when the final goes out

        def backlog(self) -> int:
            return 0
    request.events = Probe()
    w.submit(request)
    assert seen.get(timeout=30) is False
    assert threading.active_count() >= 1
