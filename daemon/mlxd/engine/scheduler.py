"""The worker's scheduler: admits queued requests, prefills them one chunk at a time, and decodes every
sequence past its prefill together in one batch (continuous batching).

Each `step()` runs at most one prefill chunk (of the oldest sequence still prefilling) and one batched decode
step, so a long prompt arriving never stalls the streams already decoding for more than a chunk. Admission
keeps the number of sequences within `max_batch_size` and their possible KV-cache memory within the budget.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any, Callable

import mlx.core as mx

from mlxd.engine.batch import DecodeBatch
from mlxd.engine.images import ImageEncoder
from mlxd.engine.request import ErrorEvent, Event, FinalEvent, FinishReason, GenerationRequest
from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.kv_budget import KvBudget, KvLayout, auto_budget_bytes, probe_kv_layout
from mlxd.engine.sequence import Phase, Sequence, token_limit
from mlxd.errors import DeadlineExceeded, InternalError, MlxdError, ResourceExhausted

log = logging.getLogger(__name__)

_MIN_PREFIX_TOKENS = 16  # shorter prompts are cheaper to prefill again than to snapshot


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
    kv_layout: KvLayout | None = None            # probed from the model when not given


class Scheduler:
    def __init__(self, runtime: ModelRuntime, prefill_chunk_size: int, max_batch_size: int = 1,
                 kv_budget_bytes: int = 0, prefix_cache_bytes: int = 0,
                 on_finished: Callable[[GenerationRequest], None] = lambda r: None) -> None:
        self._runtime = runtime
        self._chunk = prefill_chunk_size
        self._max_batch = max_batch_size
        self._on_finished = on_finished
        if runtime.kv_layout is None:
            runtime.kv_layout = probe_kv_layout(runtime.model)
        self.budget = KvBudget(runtime.kv_layout, kv_budget_bytes or auto_budget_bytes())
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.waiting: collections.deque[GenerationRequest] = collections.deque()
        self.prefilling: list[Sequence] = []     # admitted, prompt not yet in the cache; oldest first
        self.batch = DecodeBatch(runtime.model, on_leave=self._remember_answer if prefix_cache_bytes else None)
        self.admitted: list[Sequence] = []      # every sequence not yet DONE, for admission and cleanup

    def has_work(self) -> bool:
        return bool(self.waiting or self.admitted or self.batch.has_work())

    def step(self) -> None:
        self._admit()
        if self.prefilling:
            self._prefill_one_chunk(self.prefilling[0])
        if self.batch.has_work():
            self._decode_one_step()
        self._collect_finished()

    # -- the work ------------------------------------------------------------------------------------------

    def _prefill_one_chunk(self, seq: Sequence) -> None:
        try:
            seq.prefill_step()
        except Exception as error:
            seq.fail(_as_mlxd_error(error, seq))
        if seq.phase is not Phase.PREFILL:
            self.prefilling.remove(seq)
        if seq.phase is Phase.DECODE:
            self._remember_prefix(seq)
            self.batch.join(seq)

    # -- the prefix cache ----------------------------------------------------------------------------------

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Start a new sequence from the longest stored KV prefix of its prompt (all but the last token)."""
        if seq.prefix_cacheable:
            length, cache = self.prefix_cache.lookup(seq.request.prompt_ids[:-1], self._runtime.model.make_cache)
            if length:
                seq.start_from_prefix(length, cache)

    def _remember_prefix(self, seq: Sequence) -> None:
        """Store the KV of a prompt just prefilled, unless it adds few tokens to what came from the cache (a copy
        of the whole prefix then costs more than those few tokens' prefill)."""
        prefix = seq.request.prompt_ids[:-1]
        if seq.prefix_cacheable and len(prefix) - seq.cached_tokens >= _MIN_PREFIX_TOKENS:
            self._store(prefix, seq.cache, wait=True)

    def _remember_answer(self, seq: Sequence, row_caches: Callable[[], list | None]) -> None:
        """Store the KV of prompt and answer of a sequence leaving the decode batch: the next turn of a chat
        resends both, and gets them from the cache up to where its tokens differ (a trimmable snapshot). Only
        when the answer adds enough tokens, and not for sliding-window models (row_caches gives None)."""
        prompt, answer = seq.request.prompt_ids, seq.generated
        if not seq.prefix_cacheable or len(answer) < _MIN_PREFIX_TOKENS:
            return
        caches = row_caches()
        if caches is None:
            return
        # The cache holds the prompt and the answer but, when no step fed it yet, the answer's last token.
        held = caches[0].offset
        if not len(prompt) <= held <= len(prompt) + len(answer):
            log.error("a leaving row holds %d positions for %d prompt and %d answer tokens; not stored",
                      held, len(prompt), len(answer))
            return
        # Not waiting: a sync here would stall the decode step already queued for the other rows.
        self._store((list(prompt) + answer)[:held], caches, wait=False)

    def _store(self, tokens: list[int], caches: list, wait: bool) -> None:
        try:
            self.prefix_cache.insert(tokens, caches, wait=wait)
        except Exception:  # a cache that cannot store is a lost speed-up, never a failed request
            log.exception("could not store a prefix-cache snapshot")

    def _decode_one_step(self) -> None:
        try:
            self.batch.step()
        except Exception as error:
            # One forward pass serves every row, so a failure inside it ends them all; the worker goes on.
            held = self.batch.sequences()
            for seq in held:
                if seq.phase is not Phase.DONE:
                    seq.fail(_as_mlxd_error(error, seq))
            self.batch.clear()

    def _collect_finished(self) -> None:
        if all(s.phase is not Phase.DONE for s in self.admitted):
            return
        self.admitted = [s for s in self.admitted if s.phase is not Phase.DONE]  # on_finished ran at their end
        if not self.admitted:
            mx.clear_cache()  # give cache memory back once nothing runs

    # -- admission -----------------------------------------------------------------------------------------

    def _admit(self) -> None:
        while self.waiting and len(self.admitted) < self._max_batch:
            request = self.waiting[0]
            if self._end_if_cancelled(request):
                self.waiting.popleft()
                continue
            try:
                if not self._fits(request):
                    return  # waits until running sequences end
                if not self.admitted:
                    mx.reset_peak_memory()  # peak memory then covers this request and those joining it
                seq = Sequence(request, self._runtime, self._chunk, on_end=self._on_finished)
                self._reuse_prefix(seq)
            except MlxdError as error:
                self.waiting.popleft()
                self._on_finished(request)
                request.events.put(ErrorEvent(error))
                continue
            self.waiting.popleft()
            self.admitted.append(seq)
            self.prefilling.append(seq)

    def _fits(self, request: GenerationRequest) -> bool:
        """Whether the request fits the KV budget beside the admitted ones; raises if it never can."""
        reserved = len(request.prompt_ids) + token_limit(request, self._runtime.context_length)
        if not self.budget.fits([reserved]):
            raise ResourceExhausted(
                f"the request may need {self.budget.need([reserved]) >> 20} MiB of KV cache (prompt + max_tokens "
                f"= {reserved} tokens); the budget is {self.budget.budget_bytes >> 20} MiB")
        return self.budget.fits([s.reserved for s in self.admitted] + [reserved])

    def _end_if_cancelled(self, request: GenerationRequest) -> bool:
        """A request cancelled or expired while queued ends here without touching the model."""
        if request.deadline_passed():
            event = ErrorEvent(DeadlineExceeded(f"request {request.request_id!r} expired in the queue"))
        elif request.cancel.is_set:
            event = FinalEvent(FinishReason.CANCELLED, len(request.prompt_ids), 0)
        else:
            return False
        self._on_finished(request)  # first, so the request id is free once the client sees the end
        request.events.put(event)
        return True


def _as_mlxd_error(error: Exception, seq: Sequence) -> MlxdError:
    if isinstance(error, MlxdError):
        return error
    # A bug, not a bad request: log it with its traceback. %r: client text cannot forge log lines.
    log.error("request %r failed", seq.request.request_id, exc_info=error)
    return InternalError(f"{type(error).__name__}: {error}")


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
