"""One request's output: generated tokens in, events out (DESIGN.md §4.5: no I/O, no threads, no model).

It detokenizes, holds back text that may still become a stop string, ends the request at an end token, a stop
string or its token limit, and builds the final event with usage and timings. The scheduler feeds it the tokens
the runner produced and hands the events it returns to the worker, which delivers them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mlxd.engine.request import (
    ErrorEvent,
    Event,
    FinalEvent,
    FinishReason,
    GenerationRequest,
    Timings,
    TokenEvent,
    TokenLogprob,
)
from mlxd.errors import ResourceExhausted
from mlxd.generation.detokenizer import StreamingDetokenizer
from mlxd.generation.stops import StopMatcher


def token_limit(request: GenerationRequest, context_length: int) -> int:
    """How many tokens a request may generate: max_tokens, or (0) until the context is full."""
    prompt_len = len(request.prompt_ids)
    room = context_length - prompt_len
    if room < 1:
        raise ResourceExhausted(f"the prompt ({prompt_len} tokens) leaves no room in the context ({context_length})")
    return min(request.max_tokens, room) if request.max_tokens else room


class RequestOutput:
    def __init__(self, request: GenerationRequest, limit: int, decode_text: Callable[[list[int]], str],
                 held_ids: frozenset[int], eos_ids: frozenset[int], special_ids: frozenset[int] = frozenset()) -> None:
        self.request = request
        self.limit = limit
        self._detokenizer = StreamingDetokenizer(decode_text, held_ids=held_ids)
        # Left out of the detokenizer, so the text is what decode(ids, skip_special_tokens=True) gives.
        self._untold = special_ids if request.skip_special_tokens else frozenset()
        self._stops = StopMatcher(request.compiled_stops)
        self._end_ids = request.stop_token_ids | (frozenset() if request.ignore_eos else eos_ids)
        self.done = False
        self.generated: list[int] = []
        self.constraint_complete = False  # the constraint accepted the output
        self.prompt_logprobs: list[TokenLogprob] = []
        self.cached_tokens = 0           # prompt tokens a prefix-cache hit supplied
        self.drafted = self.accepted_drafts = 0  # speculative decoding's drafts, and those the model accepted
        self._started = time.monotonic()
        self._first_token_at = 0.0

    def accept(self, token: int, logprob: TokenLogprob | None, completes: bool = False) -> list[Event]:
        """The next generated token: the text it releases, and the final event when it ends the request.
        completes: the request's constraint is complete with this token (nothing may follow it: STOP)."""
        if self.done:
            return []  # ended (cancel, stop) after the step that made this token was queued
        if not self.generated:
            self._first_token_at = time.monotonic()
        self.generated.append(token)
        self.constraint_complete |= completes
        logprobs = [logprob] if logprob else []
        if token in self._end_ids:
            return [TokenEvent("", [token], logprobs), *self.finish(FinishReason.STOP, stop_token_id=token)]
        text, matched = self._stops.feed("" if token in self._untold else self._detokenizer.add(token))
        events: list[Event] = [TokenEvent(text, [token], logprobs)]
        if matched is not None:
            events += self.finish(FinishReason.STOP_SEQUENCE, matched_stop=matched)
        elif completes:
            events += self.finish(FinishReason.STOP)
        elif len(self.generated) >= self.limit:
            events += self.finish(FinishReason.LENGTH)
        return events

    def accept_run(self, tokens: list[int], logprobs: list[TokenLogprob] | None,
                   completes: bool = False) -> list[Event]:
        """A step's tokens (several after a verify step), taken one by one as `accept` takes them: the first
        that ends the request (an end token, a stop string, the token limit) drops the rest of the run."""
        events: list[Event] = []
        for i, token in enumerate(tokens):
            if self.done:
                break
            events += self.accept(token, logprobs[i] if logprobs else None, completes and i == len(tokens) - 1)
        return events

    def count_drafts(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted_drafts += accepted

    def finish(self, reason: FinishReason, matched_stop: str = "", stop_token_id: int = -1) -> list[Event]:
        """End the request: the text still held back (final now; it may still complete a stop, whose text is then
        cut, and which then ends the request unless it was cancelled: a cancel ends it CANCELLED, as the protocol
        says), then the final."""
        events: list[Event] = []
        if reason is not FinishReason.STOP_SEQUENCE:
            tail, matched = self._stops.feed(self._detokenizer.finish())
            if matched is None:
                tail += self._stops.flush()
            elif reason is not FinishReason.CANCELLED:
                reason, matched_stop = FinishReason.STOP_SEQUENCE, matched
            if tail:
                events.append(TokenEvent(tail, []))
        self.done = True
        return events + [self._final_event(reason, matched_stop, stop_token_id)]

    def fail(self, error: BaseException) -> list[Event]:
        """End the request with an error (a bad request found late, a deadline, or a bug: INTERNAL)."""
        self.done = True
        return [ErrorEvent(error)]

    def _final_event(self, reason: FinishReason, matched_stop: str, stop_token_id: int) -> FinalEvent:
        now = time.monotonic()
        req = self.request
        n_prompt, n_gen = len(req.prompt_ids), len(self.generated)
        timings = Timings(queue_seconds=self._started - req.submitted_at, total_seconds=now - req.submitted_at)
        if self._first_token_at:
            prefill_time = self._first_token_at - self._started
            timings.time_to_first_token_seconds = self._first_token_at - req.submitted_at
            computed = n_prompt - self.cached_tokens  # a prefix-cache hit skipped the others
            timings.prefill_tokens_per_second = computed / prefill_time if prefill_time > 0 else 0.0
            decode_time = now - self._first_token_at
            timings.decode_tokens_per_second = (n_gen - 1) / decode_time if n_gen > 1 and decode_time > 0 else 0.0
        # peak_memory_bytes is the scheduler's to stamp: it owns the process-wide MLX counters.
        return FinalEvent(reason, n_prompt, n_gen, cached_tokens=self.cached_tokens, drafted_tokens=self.drafted,
                          accepted_draft_tokens=self.accepted_drafts, matched_stop=matched_stop,
                          stop_token_id=stop_token_id, timings=timings, prompt_logprobs=self.prompt_logprobs,
                          constraint_complete=self.constraint_complete)
