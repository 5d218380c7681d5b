"""The worker's scheduler: admits queued requests and advances the active sequences one step at a time.

Today at most `max_active` sequences (default 1) run; each `step()` gives every active sequence one unit of
work, which is the shape continuous batching will fill in with one batched forward pass.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any, Callable

import mlx.core as mx

from mlxd.engine.images import ImageEncoder
from mlxd.engine.request import ErrorEvent, Event, FinalEvent, FinishReason, GenerationRequest
from mlxd.engine.sequence import Phase, Sequence
from mlxd.errors import DeadlineExceeded, InternalError, MlxdError

log = logging.getLogger(__name__)


@dataclass
class ModelRuntime:
    """What a sequence needs from the loaded model, in one place."""

    model: Any
    decode_text: Callable[[list[int]], str]
    byte_fallback_ids: frozenset[int]     # tokens the detokenizer holds until their byte run ends
    eos_ids: frozenset[int]
    context_length: int
    vocab_size: int
    image_encoder: ImageEncoder | None = None    # vision-language models only


class Scheduler:
    def __init__(self, runtime: ModelRuntime, prefill_chunk_size: int, max_active: int = 1,
                 on_finished: Callable[[GenerationRequest], None] = lambda r: None) -> None:
        self._runtime = runtime
        self._chunk = prefill_chunk_size
        self._max_active = max_active
        self._on_finished = on_finished
        self.waiting: collections.deque[GenerationRequest] = collections.deque()
        self.active: list[Sequence] = []

    def has_work(self) -> bool:
        return bool(self.waiting or self.active)

    def step(self) -> None:
        self._admit()
        for seq in self.active:
            try:
                seq.advance()
            except MlxdError as error:
                seq.fail(error)
            except Exception as error:  # a bug in one request must not take the worker down (DESIGN §1)
                log.exception("request %r failed", seq.request.request_id)  # %r: client text cannot forge log lines
                seq.fail(InternalError(f"{type(error).__name__}: {error}"))
        finished = [s for s in self.active if s.phase is Phase.DONE]
        if finished:
            self.active = [s for s in self.active if s.phase is not Phase.DONE]
            for seq in finished:
                self._on_finished(seq.request)
            if not self.active:
                mx.clear_cache()  # give cache memory back between requests

    def _admit(self) -> None:
        while self.waiting and len(self.active) < self._max_active:
            request = self.waiting.popleft()
            if self._end_if_cancelled(request):
                continue
            rt = self._runtime
            try:
                seq = Sequence(request, rt, self._chunk)
            except MlxdError as error:
                request.events.put(ErrorEvent(error))
                self._on_finished(request)
                continue
            self.active.append(seq)

    def _end_if_cancelled(self, request: GenerationRequest) -> bool:
        """A request cancelled or expired while queued ends here without touching the model."""
        if request.deadline_passed():
            request.events.put(ErrorEvent(DeadlineExceeded(f"request {request.request_id!r} expired in the queue")))
        elif request.cancel.is_set:
            request.events.put(FinalEvent(FinishReason.CANCELLED, len(request.prompt_ids), 0))
        else:
            return False
        self._on_finished(request)
        return True


def run_to_completion(runtime: ModelRuntime, request: GenerationRequest, prefill_chunk_size: int = 512) -> list[Event]:
    """Serve one request on the calling thread with a scheduler of its own; its events, in order.
    For warm-up and in-process benchmarks: the service goes through the worker instead."""
    scheduler = Scheduler(runtime, prefill_chunk_size)
    scheduler.waiting.append(request)
    while scheduler.has_work():
        scheduler.step()
    events = []
    while not request.events.empty():
        events.append(request.events.get())
    return events
