"""One request's life on the worker: its own prefill in chunks, then the tokens the decode batch hands it.

The scheduler calls `prefill_step()` once per chunk; when the phase turns to DECODE the sequence joins the
DecodeBatch (engine/batch.py), which takes its cache, queues its steps and gives each token to `accept()`,
where stops, detokenizing and events happen.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any, Callable

import mlx.core as mx

from mlxd.engine import decoder
from mlxd.engine.images import chunk_end
from mlxd.engine.request import (ErrorEvent, FinalEvent, FinishReason, GenerationRequest, TokenEvent, TokenLogprob,
                                 Timings)
from mlxd.errors import DeadlineExceeded, ResourceExhausted, Unsupported
from mlxd.generation.detokenizer import StreamingDetokenizer
from mlxd.generation.sampling import Sampler
from mlxd.generation.stops import StopMatcher

if TYPE_CHECKING:
    from mlxd.engine.scheduler import ModelRuntime


class Phase(enum.Enum):
    PREFILL = 1
    DECODE = 2
    DONE = 3


def token_limit(request: GenerationRequest, context_length: int) -> int:
    """How many tokens a request may generate: max_tokens, or (0) until the context is full."""
    prompt_len = len(request.prompt_ids)
    room = context_length - prompt_len
    if room < 1:
        raise ResourceExhausted(f"the prompt ({prompt_len} tokens) leaves no room in the context ({context_length})")
    return min(request.max_tokens, room) if request.max_tokens else room


class Sequence:
    def __init__(self, request: GenerationRequest, runtime: "ModelRuntime", prefill_chunk_size: int,
                 on_end: Callable[[GenerationRequest], None] = lambda r: None) -> None:
        self.request = request
        self._on_end = on_end  # told before the last event goes out, so the request id is free once it arrives
        self._model = runtime.model
        self._cache = runtime.model.make_cache()
        self.sampler = Sampler(request.sampling, runtime.vocab_size, request.prompt_ids)
        self._detokenizer = StreamingDetokenizer(runtime.decode_text, held_ids=runtime.byte_fallback_ids)
        self._stops = StopMatcher(request.compiled_stops)
        self._end_ids = request.stop_token_ids | (frozenset() if request.ignore_eos else runtime.eos_ids)
        self._chunk = prefill_chunk_size
        if request.images and runtime.image_encoder is None:
            raise Unsupported("this model is text-only; it cannot take images")
        self._image_encoder = runtime.image_encoder
        self.limit = token_limit(request, runtime.context_length)
        self.reserved = len(request.prompt_ids) + self.limit   # tokens its cache may grow to
        self.phase = Phase.PREFILL
        self._prefilled = 0          # prompt tokens already in the cache (all but the last go by prefill)
        self.cached_tokens = 0       # of those, how many a prefix-cache hit supplied
        self.queued = 0              # decode steps queued for this sequence (the batch counts them)
        self._generated: list[int] = []
        self._prompt_logprobs: list[TokenLogprob] = []
        self._started = time.monotonic()
        self._first_token_at = 0.0

    # -- the scheduler's and the batch's interface ----------------------------------------------------------

    def prefill_step(self) -> None:
        """Run one prefill chunk; afterwards `phase` is DECODE when the prompt (all but its last token) is in
        the cache, DONE when the request ended (cancelled, deadline)."""
        if not self._check_cancelled():
            self._prefill_one_chunk()

    def ready_for_step(self) -> bool:
        """Whether the batch should queue another decode step for this sequence (ends it if cancelled)."""
        if self.phase is not Phase.DECODE or self._check_cancelled():
            return False
        return self.queued < self.limit

    @property
    def position(self) -> int:
        """The position of the next token to run, i.e. how many the cache holds."""
        return self._prefilled

    @property
    def last_prompt_token(self) -> int:
        return self.request.prompt_ids[-1]

    def start_from_prefix(self, length: int, cache: list[Any]) -> None:
        """Begin with a cache that already holds the first `length` prompt tokens (a prefix-cache hit)."""
        self._cache, self._prefilled, self.cached_tokens = cache, length, length

    @property
    def generated(self) -> list[int]:
        """The tokens generated so far (the last may not have run through the model yet)."""
        return self._generated

    @property
    def prefix_cacheable(self) -> bool:
        """Whether this prompt's KV may come from or go to the prefix cache: image tokens are placeholders
        whose KV depends on the image, and prompt logprobs need every prompt position to run."""
        return not self.request.images and not self.request.prompt_logprobs

    @property
    def cache(self) -> list[Any]:
        return self._cache

    def take_cache(self) -> list[Any]:
        """Hand the prefilled per-layer caches to the decode batch."""
        cache, self._cache = self._cache, []
        return cache

    def release(self) -> None:
        """Drop this sequence's own KV cache (the batch drops its row when it sees the phase is DONE)."""
        self._cache = []

    # -- prefill --------------------------------------------------------------------------------------------

    def _prefill_one_chunk(self) -> None:
        prompt = self.request.prompt_ids
        end = chunk_end(self._prefilled, self._chunk, len(prompt) - 1, self.request.images)
        if end > self._prefilled:
            ids = prompt[self._prefilled:end]
            images = self._chunk_images(self._prefilled, end)
            if self.request.prompt_logprobs:
                targets = prompt[self._prefilled + 1:end + 1]
                self._prompt_logprobs += decoder.prefill_chunk_with_logprobs(
                    self._model, self._cache, ids, targets, self.request.top_logprobs, images)
            else:
                decoder.prefill_chunk(self._model, self._cache, ids, images)
            self._prefilled = end
        if self._prefilled >= len(prompt) - 1:
            self.phase = Phase.DECODE

    def _chunk_images(self, start: int, end: int) -> list[tuple[int, mx.array]]:
        """(position in the chunk, embeddings) of the images whose spans lie in prompt[start:end]."""
        return [(image.position - start, self._image_encoder.encode(image))
                for image in self.request.images if start <= image.position < end]

    # -- decode ---------------------------------------------------------------------------------------------

    def accept(self, token: int, logprob: TokenLogprob | None) -> None:
        """The batch computed this sequence's next token: stream it, and end the request if it should."""
        if self.phase is not Phase.DECODE:
            return  # ended (cancel, stop) after this step was queued
        if not self._generated:
            self._first_token_at = time.monotonic()
        self._generated.append(token)
        logprobs = [logprob] if logprob else []
        if token in self._end_ids:
            self._emit(TokenEvent("", [token], logprobs))
            self._finish(FinishReason.STOP, stop_token_id=token)
            return
        text, matched = self._stops.feed(self._detokenizer.add(token))
        self._emit(TokenEvent(text, [token], logprobs))
        if matched is not None:
            self._finish(FinishReason.STOP_SEQUENCE, matched_stop=matched)
        elif len(self._generated) >= self.limit:
            self._finish(FinishReason.LENGTH)

    # -- ending -----------------------------------------------------------------------------------------------

    def _check_cancelled(self) -> bool:
        req = self.request
        if req.deadline_passed():
            req.cancel.cancel("deadline")
            self.fail(DeadlineExceeded(f"request {req.request_id!r} passed its deadline"))
            return True
        if req.cancel.is_set:
            self._finish(FinishReason.CANCELLED)
            return True
        return False

    def fail(self, error: BaseException) -> None:
        """End the request with an error (the scheduler's choice of status for a failure, or a deadline)."""
        self.phase = Phase.DONE
        self.release()
        self._emit(ErrorEvent(error))

    def _finish(self, reason: FinishReason, matched_stop: str = "", stop_token_id: int = -1) -> None:
        if reason is not FinishReason.STOP_SEQUENCE:
            # Text held back by the detokenizer or the stop matcher is final now; it may still complete a stop.
            tail, matched = self._stops.feed(self._detokenizer.finish())
            if matched is not None:
                reason, matched_stop = FinishReason.STOP_SEQUENCE, matched
            else:
                tail += self._stops.flush()
            if tail:
                self._emit(TokenEvent(tail, []))
        self.phase = Phase.DONE
        self.release()
        self._emit(self._final_event(reason, matched_stop, stop_token_id))

    def _final_event(self, reason: FinishReason, matched_stop: str, stop_token_id: int) -> FinalEvent:
        now = time.monotonic()
        req = self.request
        n_prompt, n_gen = len(req.prompt_ids), len(self._generated)
        timings = Timings(queue_seconds=self._started - req.submitted_at, total_seconds=now - req.submitted_at)
        if self._first_token_at:
            prefill_time = self._first_token_at - self._started
            timings.time_to_first_token_seconds = self._first_token_at - req.submitted_at
            computed = n_prompt - self.cached_tokens  # a prefix-cache hit skipped the others
            timings.prefill_tokens_per_second = computed / prefill_time if prefill_time > 0 else 0.0
            decode_time = now - self._first_token_at
            timings.decode_tokens_per_second = (n_gen - 1) / decode_time if n_gen > 1 and decode_time > 0 else 0.0
        return FinalEvent(reason, n_prompt, n_gen, cached_tokens=self.cached_tokens, matched_stop=matched_stop,
                          stop_token_id=stop_token_id,
                          timings=timings, peak_memory_bytes=mx.get_peak_memory(),
                          prompt_logprobs=self._prompt_logprobs)

    def _emit(self, event: Any) -> None:
        if isinstance(event, (FinalEvent, ErrorEvent)):
            self._on_end(self.request)
        self.request.events.put(event)
