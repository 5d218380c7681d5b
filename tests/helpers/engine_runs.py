"""Driving the engine's scheduler by hand, as the worker does: deliver each step's events to their requests."""

from __future__ import annotations

from mlxd.engine.request import ErrorEvent, FinalEvent, GenerationRequest, TokenEvent
from mlxd.engine.scheduler import Routed, Scheduler


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
