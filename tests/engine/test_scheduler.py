"""The scheduler's policy on a fake model (milliseconds per step): admission, the KV budget, cancellation and
deadlines in the queue and mid-stream, failures that end only the requests they touch, and backpressure."""

from __future__ import annotations

import time

import pytest

from mlxd.engine import scheduler as scheduler_module
from mlxd.engine.endings import as_mlxd_error
from mlxd.engine.request import ErrorEvent, EventQueue, FinalEvent, FinishReason, GenerationRequest, TokenEvent
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.errors import DeadlineExceeded, InternalError, ResourceExhausted
from mlxd.generation.params import SamplingParams
from tests.helpers.engine_runs import deliver, drain, run, run_arrivals
from tests.helpers.fakes import FakeModel, fake_runtime

GREEDY = SamplingParams(temperature=0.0)


def _request(name: str, prompt: list[int], n: int = 12, **kwargs) -> GenerationRequest:
    return GenerationRequest(name, prompt, kwargs.pop("sampling", GREEDY), max_tokens=n, ignore_eos=True, **kwargs)


def _prompts() -> list[list[int]]:
    return [[3, 9, 4], [7] * 20, [5, 6], [11, 12, 13, 14, 15, 16, 17, 18, 19], [2]]


def _alone(runtime, prompt: list[int], n: int = 12, **kwargs) -> list[int]:
    request = _request("alone", prompt, n, **kwargs)
    run(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4)), request)
    return drain(request)[0]


@pytest.mark.parametrize("window", [None, 5])
def test_rows_batched_yield_their_tokens_alone(window):
    runtime = fake_runtime(FakeModel(window=window))
    settings = [dict(), dict(sampling=SamplingParams(temperature=0.8, seed=3)), dict(n=5), dict(), dict(n=30)]
    alone = [_alone(runtime, p, **s) for p, s in zip(_prompts(), settings)]
    batched = [_request(f"r{i}", p, **s) for i, (p, s) in enumerate(zip(_prompts(), settings))]
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4, max_batch_size=8))
    run_arrivals(scheduler, {0: batched[:2], 3: batched[2:4], 7: batched[4:]})
    assert [drain(r)[0] for r in batched] == alone


def test_admission_keeps_order_and_the_batch_bound():
    scheduler = Scheduler(fake_runtime(), SchedulerOptions(prefill_chunk_size=4, max_batch_size=2))
    requests = [_request(f"r{i}", p) for i, p in enumerate(_prompts()[:3])]
    for request in requests:
        scheduler.add(request)
    deliver(scheduler.step())
    assert scheduler.admitted == requests[:2] and list(scheduler.waiting) == requests[2:]
    run(scheduler)
    assert all(drain(r)[3].completion_tokens == 12 for r in requests)


@pytest.mark.parametrize("packed", [True, False])
def test_short_prompts_arriving_together_share_a_steps_prefill_chunk(monkeypatch, packed):
    """The oldest prefilling request takes its chunk; the next ones whose whole prompt fits the tokens left are
    prefilled in the same step (a long one waits its turn without holding up the short ones behind it). Packed or
    not, each request yields the tokens it yields alone."""
    monkeypatch.setattr(scheduler_module, "PACKED_PREFILLS", packed)
    runtime = fake_runtime()
    prompts = [[3, 9, 4], [7] * 20, [5, 6], [11, 12, 13, 14], [2]]
    requests = [_request(f"r{i}", p) for i, p in enumerate(prompts)]
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=8, max_batch_size=8))
    for request in requests:
        scheduler.add(request)
    first_step: dict[str, int] = {}
    step = 0
    while scheduler.has_work():
        for request, event in scheduler.step():
            if isinstance(event, TokenEvent):
                first_step.setdefault(request.request_id, step)
            request.events.put(event)
        step += 1
    firsts = [first_step[r.request_id] for r in requests]
    # Packed: r0 (2 tokens), r2 (1), r3 (3) and r4 (0) in the first step's 8 tokens; r1's 19 in chunks after.
    assert firsts == ([1, 4, 1, 1, 1] if packed else [1, 4, 5, 6, 7])
    assert [drain(r)[0] for r in requests] == [_alone(runtime, p) for p in prompts]


def test_admission_waits_for_the_kv_budget_and_refuses_what_never_fits():
    scheduler = Scheduler(fake_runtime(), SchedulerOptions(prefill_chunk_size=4, max_batch_size=8))
    requests = [_request(f"r{i}", p) for i, p in enumerate(_prompts()[:3])]
    reserved = [len(r.prompt_ids) + r.max_tokens for r in requests]
    scheduler.budget.budget_bytes = scheduler.budget.need(reserved[:2])  # two fit together, never three
    for request in requests:
        scheduler.add(request)
    deliver(scheduler.step())
    assert scheduler.admitted == requests[:2]
    run(scheduler)
    assert all(drain(r)[3].completion_tokens == 12 for r in requests)
    huge = _request("huge", [1, 2], n=400)
    run(scheduler, huge)
    with pytest.raises(ResourceExhausted, match="KV cache"):
        drain(huge)


def test_waiting_requests_that_are_cancelled_or_expired_end_while_the_batch_is_full():
    scheduler = Scheduler(fake_runtime(), SchedulerOptions(prefill_chunk_size=4, max_batch_size=1))
    running, cancelled, expired = (_request(n, [4, 5, 6], n=40) for n in ("running", "cancelled", "expired"))
    expired.deadline = time.monotonic() - 1
    for request in (running, cancelled, expired):
        scheduler.add(request)
    deliver(scheduler.step())
    cancelled.cancel.cancel("client went away")
    deliver(scheduler.step())
    assert list(scheduler.waiting) == [] and scheduler.admitted == [running]  # both ended while it runs
    assert drain(cancelled)[3].finish_reason is FinishReason.CANCELLED
    with pytest.raises(DeadlineExceeded):
        drain(expired)
    run(scheduler)
    assert drain(running)[3].completion_tokens == 40


def test_cancel_and_deadline_mid_stream_end_only_that_request():
    runtime = fake_runtime()
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4, max_batch_size=4))
    keep, cancel, expire = (_request(n, p, n=20) for n, p in zip(("keep", "cancel", "expire"), _prompts()))
    for request in (keep, cancel, expire):
        scheduler.add(request)
    for _ in range(12):  # past the 20-token prompt's five prefill chunks
        deliver(scheduler.step())
    cancel.cancel.cancel("cancel rpc")
    expire.deadline = time.monotonic() - 1
    run(scheduler)
    ids, _, _, final = drain(cancel)
    assert final.finish_reason is FinishReason.CANCELLED and 0 < len(ids) < 20
    with pytest.raises(DeadlineExceeded):
        drain(expire)
    assert drain(keep)[0] == _alone(runtime, _prompts()[0], n=20)


def test_a_failing_prefill_ends_only_its_request():
    runtime = fake_runtime(FakeModel(fail_on=33))
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4, max_batch_size=4))
    good, bad = _request("good", _prompts()[1]), _request("bad", [1, 2, 33, 4, 5])
    run(scheduler, good, bad)
    with pytest.raises(InternalError, match="injected fault"):
        drain(bad)
    assert drain(good)[0] == _alone(fake_runtime(), _prompts()[1])


def test_a_failing_decode_step_ends_the_batch_and_the_scheduler_goes_on():
    scheduler = Scheduler(fake_runtime(FakeModel(fail_on=33)), SchedulerOptions(prefill_chunk_size=4,
                                                                                max_batch_size=4))
    other, bad = _request("other", [3, 4, 5], n=30), _request("bad", [1, 2, 33])  # 33 runs in its first step
    run(scheduler, other, bad)
    for request in (other, bad):  # one forward pass served both rows
        with pytest.raises(InternalError):
            drain(request)
    later = _request("later", [3, 4, 5])
    run(scheduler, later)
    assert drain(later)[0] == _alone(fake_runtime(), [3, 4, 5])


def test_a_bug_at_admission_ends_that_request_only():
    model = FakeModel()
    runtime = fake_runtime(model)
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4, max_batch_size=4))
    make_cache, calls = model.make_cache, []

    def broken_once():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug while making a cache")
        return make_cache()
    model.make_cache = broken_once
    first, second = _request("first", [3, 4, 5]), _request("second", [3, 4, 5])
    run(scheduler, first, second)
    with pytest.raises(InternalError, match="ValueError: a bug while making a cache"):
        drain(first)
    assert drain(second)[0] == _alone(fake_runtime(), [3, 4, 5])


def test_abort_ends_everything_held():
    scheduler = Scheduler(fake_runtime(), SchedulerOptions(prefill_chunk_size=4, max_batch_size=1))
    requests = [_request(f"r{i}", p) for i, p in enumerate(_prompts()[:3])]
    for request in requests:
        scheduler.add(request)
    deliver(scheduler.step())
    deliver(scheduler.abort(InternalError("scheduler bug")))
    assert not scheduler.has_work()
    for request in requests:
        with pytest.raises(InternalError, match="scheduler bug"):
            drain(request)


class _SlowReader(EventQueue):
    """An event sink whose reader takes nothing until told to."""

    def __init__(self, reading: bool = False) -> None:
        super().__init__()
        self.reading = reading

    def backlog(self) -> int:
        return 0 if self.reading else super().backlog()


@pytest.mark.parametrize("window", [None, 5])
def test_a_row_whose_reader_falls_behind_pauses_and_resumes_with_the_same_tokens(window):
    runtime = fake_runtime(FakeModel(window=window))
    options = SchedulerOptions(prefill_chunk_size=4, max_batch_size=4, max_stream_backlog=6)
    scheduler = Scheduler(runtime, options)
    slow, fast = _request("slow", _prompts()[3], n=30, events=_SlowReader()), _request("fast", _prompts()[0], n=30,
                                                                                      events=_SlowReader(True))
    for request in (slow, fast):
        scheduler.add(request)
    for _ in range(40):
        deliver(scheduler.step())
    held = slow.events.backlog()
    assert 6 <= held <= 8  # it stopped generating at the limit (a step already queued still came in)
    assert isinstance(fast.events.drain()[-1], FinalEvent)  # the other row went on
    slow.events.reading = True
    run(scheduler)
    assert drain(slow)[0] == _alone(runtime, _prompts()[3], n=30)


def test_a_row_paused_past_the_stall_limit_is_cancelled():
    options = SchedulerOptions(prefill_chunk_size=4, max_batch_size=4, max_stream_backlog=4,
                               stalled_stream_seconds=0.0)
    scheduler = Scheduler(fake_runtime(), options)
    stalled = _request("stalled", [3, 4, 5], n=40, events=_SlowReader())
    run(scheduler, stalled)
    events = stalled.events.drain()
    assert isinstance(events[-1], FinalEvent) and events[-1].finish_reason is FinishReason.CANCELLED
    assert sum(len(e.token_ids) for e in events if isinstance(e, TokenEvent)) < 10
    assert not any(isinstance(e, ErrorEvent) for e in events)


def test_skipped_special_tokens_leave_the_text_but_not_the_ids():
    runtime = fake_runtime()
    every = _alone(runtime, [3, 9, 4])
    runtime.special_ids = frozenset(every[::3])
    told = _request("told", [3, 9, 4])
    untold = _request("untold", [3, 9, 4], skip_special_tokens=True)
    for request in (told, untold):
        run(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4)), request)
    told_ids, told_text, _, _ = drain(told)
    untold_ids, untold_text, _, _ = drain(untold)
    assert told_ids == untold_ids == every
    assert told_text == runtime.decode_text(every)
    assert untold_text == runtime.decode_text([i for i in every if i not in runtime.special_ids])
    assert len(untold_text) < len(told_text)


@pytest.mark.parametrize("message", ["[malloc] Unable to allocate 1073741824 bytes.",
                                     "[metal::malloc] Resource limit (499000) exceeded.",
                                     "cudaMallocAsync(&data, size, stream) failed: out of memory"])
def test_a_failed_allocation_is_resource_exhausted_not_a_bug(message):
    request = _request("big", [1, 2, 3])
    assert isinstance(as_mlxd_error(RuntimeError(message), request), ResourceExhausted)
    assert isinstance(as_mlxd_error(MemoryError(), request), ResourceExhausted)
    assert isinstance(as_mlxd_error(RuntimeError("index out of range"), request), InternalError)


def test_a_step_out_of_memory_releases_mlxs_buffers_once_after_its_rows_are_dropped(monkeypatch):
    """Every row of the failed step ends RESOURCE_EXHAUSTED; MLX's cache of freed buffers goes back to the device
    once, after the batch's caches are dropped (so theirs go back too), not once a request before they are."""
    import mlx.core as mx

    from tests.helpers.fault_daemon import OUT_OF_MEMORY, FaultOnToken

    def full() -> None:
        raise RuntimeError(OUT_OF_MEMORY)

    runtime = fake_runtime()
    runtime.model = FaultOnToken(runtime.model, 33, full)
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4, max_batch_size=4))
    rows_held: list[int] = []
    monkeypatch.setattr(mx, "clear_cache", lambda: rows_held.append(len(scheduler._runner.batch_rows())))
    others = [_request(f"other{i}", [3 + i, 4, 5], n=30) for i in range(3)]
    full_one = _request("full", [1, 2, 33])  # 33 runs in its first decode step, beside the others
    run(scheduler, *others, full_one)
    for request in (*others, full_one):
        with pytest.raises(ResourceExhausted, match="out of memory"):
            drain(request)
    assert rows_held == [0]
