"""Driving the engine's scheduler by hand, as the worker does: deliver each step's events to their requests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mlxd.engine.request import ErrorEvent, FinalEvent, GenerationRequest, TokenEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Routed, Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams


def deliver(routed: list[Routed]) -> None:
    for request, event in routed:
        request.events.put(event)


def run(scheduler: Scheduler, *requests: GenerationRequest) -> None:
    """Add the requests, then step until the scheduler holds nothing."""
    for request in requests:
        scheduler.add(request)
    while scheduler.has_work():
        deliver(scheduler.step())


def run_arrivals(scheduler: Scheduler, arrivals: dict[int, list[GenerationRequest]]) -> None:
    """Step until the scheduler holds nothing, adding arrivals[i] just before step i."""
    step = 0
    while scheduler.has_work() or any(k >= step for k in arrivals):
        for request in arrivals.pop(step, []):
            scheduler.add(request)
        deliver(scheduler.step())
        step += 1


def drain(request: GenerationRequest) -> tuple[list[int], str, list[float], FinalEvent]:
    """The request's delivered events: (token ids, text, logprobs, final); raises the error of an ErrorEvent."""
    ids: list[int] = []
    text, logprobs = "", []
    while True:
        event = request.events.get_nowait()
        if isinstance(event, ErrorEvent):
            raise event.error
        if isinstance(event, FinalEvent):
            return ids, text, logprobs, event
        assert isinstance(event, TokenEvent)
        ids += event.token_ids
        text += event.text
        logprobs += [lp.logprob for lp in event.logprobs]


def assert_batched_rows_yield_what_they_yield_alone(runtime: ModelRuntime,
                                                    requests: Callable[[], list[GenerationRequest]],
                                                    alone: SchedulerOptions, batched: SchedulerOptions,
                                                    arrivals: dict[int, slice]) -> None:
    """Each request served by itself (`alone`, whose max_batch_size should be 1), then fresh copies from
    `requests()` joining a shared scheduler at the steps `arrivals` names: the same ids, logprobs and counts."""
    singles = []
    for request in requests():
        run(Scheduler(runtime, alone), request)
        singles.append(drain(request))
    together = requests()
    run_arrivals(Scheduler(runtime, batched), {step: together[rows] for step, rows in arrivals.items()})
    for i, request in enumerate(together):
        ids, _, logprobs, final = drain(request)
        assert ids == singles[i][0], f"request {i}"
        assert logprobs == pytest.approx(singles[i][2], abs=1e-4)
        assert final.completion_tokens == singles[i][3].completion_tokens


def serve(scheduler: Scheduler, ids: list[int], sampling: SamplingParams, max_tokens: int) -> tuple[list[int], int]:
    """One request to the end (EOS ignored): its token ids and the prompt tokens the prefix cache served."""
    request = GenerationRequest("r", ids, sampling, max_tokens=max_tokens, ignore_eos=True)
    run(scheduler, request)
    tokens, _, _, final = drain(request)
    return tokens, final.cached_tokens
