"""The worker's scheduler: policy only (DESIGN.md §1). It decides; the runner (engine/runner.py) calls the model.

Each `step()` ends the waiting requests whose client left, admits requests while the batch has room and their
possible KV cache fits the budget, runs at most one prefill chunk (of the oldest request still prefilling), and
one batched decode step of every request past its prefill (continuous batching): a long prompt arriving never
stalls the streams already decoding for more than a chunk. It returns the events the step produced, each with its
request; the worker delivers them. Nothing climbs back up: no callbacks, no queues in here.

Policy kept here: admission order and the KV budget, prefill chunking (never splitting an image), the prefix
cache (look up at admission; what is stored, and when: engine/prefix_memory.py), cancellation
and deadlines, and backpressure (a row whose reader fell behind leaves the batch with its keys until the reader
catches up, and ends after `stalled_stream_seconds`). Speculation: which rows draft and how deep
(engine/speculation.py); a step with drafts first reads the step still queued, then verifies synchronously.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from dataclasses import dataclass

from mlxd.engine.draft_model import DraftModel
from mlxd.engine.endings import as_mlxd_error, gone, release_memory
from mlxd.engine.kv_budget import KvBudget, auto_budget_bytes
from mlxd.engine.live_request import LiveRequest, Phase
from mlxd.engine.output import RequestOutput, token_limit
from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.prefix_memory import PrefixMemory
from mlxd.engine.request import ErrorEvent, Event, FinishReason, GenerationRequest
from mlxd.engine.runner import RowId, Runner, StepResult
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.speculation import Speculator
from mlxd.engine.vision import chunk_end
from mlxd.errors import DeadlineExceeded, MlxdError, ResourceExhausted, Unsupported

log = logging.getLogger(__name__)

# True: no drafts while a request is prefilling. Each step runs a prefill chunk beside the decode step, so a verify
# step (synchronous, ~2x a plain step on a GPU) delays the first token of every request still to be prefilled. On an
# H100 (SmolLM2, 16 streams, session 41) admission took 210-281 ms speculating against 108-123 plain, yet whole
# requests ran 0.92-1.39x as fast with this on by round, and on the 2-core CPU speculating through the admission
# finished sooner (docs/performance.md, sessions 41 and 42): off until more rounds on a GPU say.
PLAIN_WHILE_PREFILLING = False

# True: a step's prefill chunk is shared: after the oldest prefilling request's chunk, the next ones whose whole
# remaining prompt fits the chunk's tokens left are prefilled too (each its own forward pass), so a burst of short
# prompts joins in a few steps, not one step each. On the 2-core CPU (`bench admission`, SmolLM2, 16 prompts of 64
# tokens beside a decoding stream) the last first token came 0.75x as late but the mean 1.08x, and the decoding
# stream's longest gap grew 4.9x (0.45 to 2.2 s): a step's prefill costs as its tokens do there. On an H100 (random
# 1B, session 48) the last first token came 0.60x as late (87 against 141 ms) but the mean 1.04x, and the decoding
# stream waited 84 ms once instead of 9: off. A burst wants one batched forward for its prompts, not one a prompt.
PACKED_PREFILLS = False

Routed = tuple[GenerationRequest, Event]

# The most prompt tokens a chunk of a request asking for prompt logprobs takes, whatever the prefill chunk: such a
# chunk's logits [tokens, vocab] are all computed, in float32 for the log-softmax, with a top-k's indices beside
# them (Gemma's 262,144-token vocabulary: ~1 GB a float32 copy at 1,024 tokens, ~2 GB at the CUDA default chunk of
# 2,048 unquantized), a transient that admission's KV budget does not count.
SCORED_CHUNK_TOKENS = 512


@dataclass
class SchedulerOptions:
    prefill_chunk_size: int = 512
    max_batch_size: int = 1
    kv_budget_bytes: int = 0            # 0: half the device memory left after the weights
    prefix_cache_bytes: int = 0         # 0: no prefix cache
    max_stream_backlog: int = 0         # undelivered events at which a row pauses; 0: never
    stalled_stream_seconds: float = 60.0  # a row paused this long is cancelled
    # Prompt positions (multiples of this) at which a model with recurrent layers also snapshots its prefill, since
    # its end-of-prompt snapshot serves no shorter prefix; 0: none. A hit then misses at most period - 1 tokens
    # it could reuse, while a prompt of N tokens stores about N^2 / (2 period) positions of the attention layers'
    # KV (a quarter of the layers in Qwen3.5): 1024, two prefill chunks of 512 tokens, keeps both to a few times the
    # prompt's own KV for prompts of some thousand tokens, where reusing a shared system prompt pays.
    recurrent_snapshot_period: int = 1024
    speculate: str = ""                 # "ngram": draft by prompt lookup (engine/speculation.py); "": only with a
    #                                     draft model (ModelRuntime.draft_model)
    speculate_depth: int = 4            # the most drafted tokens per row per step
    speculate_adaptive: bool = True     # False: always draft speculate_depth (tests, benchmarks of a fixed depth)
    kv_budget_sharing: int = 1          # processes sharing this device's memory for their caches (kv_budget.py)
    pipelined: bool = True              # decode steps queued before the one before is read (runner.py); False on
    #                                     the CPU, where a step computes while it is launched (WorkerOptions)


class Scheduler:
    def __init__(self, runtime: ModelRuntime, options: SchedulerOptions, runner: Runner | None = None) -> None:
        self._runtime = runtime
        self._options = options
        parts = runtime.parts
        if runner is None:
            runner = parts.runner(runtime) if parts else Runner(runtime.model, runtime.vocab_size,
                                                                runtime.image_encoder, options.pipelined)
        self._runner = runner
        self._budget: KvBudget | None = None
        self.prefix_cache = parts.prefix_cache(options.prefix_cache_bytes, runner) if parts else \
            PrefixCache(options.prefix_cache_bytes)
        self.waiting: collections.deque[GenerationRequest] = collections.deque()
        self._admitted: list[LiveRequest] = []  # every request not yet DONE, oldest first
        self._rows = itertools.count()
        self._memory = PrefixMemory(self.prefix_cache, runner, options.recurrent_snapshot_period)
        self._drafting_seconds = 0.0   # the latest verify step's drafting (a debug log line says it)
        self._drained = False          # the latest step read the step queued before it for drafts (debug log)
        draft = DraftModel(runtime.draft_model) if runtime.draft_model is not None else None
        self._speculator = (Speculator(options.speculate_depth, adaptive=options.speculate_adaptive, model=draft)
                            if (options.speculate == "ngram" or draft) and self._runner.can_speculate else None)

    @property
    def budget(self) -> KvBudget:
        """The KV budget, measured on first use (it runs one token through the model)."""
        if self._budget is None:
            total = self._options.kv_budget_bytes or auto_budget_bytes(self._options.kv_budget_sharing)
            layout = self._runner.kv_layout()
            spec = self._speculator  # a verify step holds a row's recurrent states after each position it feeds
            self._budget = KvBudget(layout.verifying(self._options.speculate_depth) if spec else layout, total)
        return self._budget

    def add(self, request: GenerationRequest) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self._admitted or self._runner.has_work())

    @property
    def admitted(self) -> list[GenerationRequest]:
        """The requests past admission and not yet done, oldest first."""
        return [live.request for live in self._admitted]

    def requests(self) -> list[GenerationRequest]:
        """Every request the scheduler holds, waiting or admitted."""
        return list(self.waiting) + [live.request for live in self._admitted]

    def step(self) -> list[Routed]:
        out: list[Routed] = []
        self._end_gone_waiting(out)
        self._admit(out)
        self._prefill_chunks(out)
        self._apply_backpressure(out)
        if self._runner.has_work():
            self._decode_one_step(out)
        self._admitted = [live for live in self._admitted if live.phase is not Phase.DONE]
        return out

    def abort(self, error: MlxdError) -> list[Routed]:
        """End everything held with `error` and start over empty (the worker's last resort after a bug)."""
        out: list[Routed] = [(request, ErrorEvent(error)) for request in self.requests()]
        self.waiting.clear()
        for live in self._admitted:
            self._runner.close(live.row)
        self._admitted = []
        self._runner.reset_batch()
        self.prefix_cache.clear()
        return out

    # -- admission -----------------------------------------------------------------------------------------------

    def _end_gone_waiting(self, out: list[Routed]) -> None:
        """Waiting requests cancelled or expired end now, so they hold no queue slot while the batch is full."""
        if any(gone(request) for request in self.waiting):
            kept: collections.deque[GenerationRequest] = collections.deque()
            for request in self.waiting:
                event = gone(request)
                if event is None:
                    kept.append(request)
                else:
                    out.append((request, event))
            self.waiting = kept

    def _admit(self, out: list[Routed]) -> None:
        while self.waiting and len(self._admitted) < self._options.max_batch_size:
            request = self.waiting[0]
            try:
                if not self._fits(request):
                    return  # waits until running requests end
                live = self._start(request)
            except Exception as error:
                self.waiting.popleft()
                out.append((request, ErrorEvent(as_mlxd_error(error, request))))
                release_memory(error)
                continue
            self.waiting.popleft()
            self._admitted.append(live)

    def _fits(self, request: GenerationRequest) -> bool:
        """Whether the request fits the KV budget beside the admitted ones; raises if it never can."""
        reserved = len(request.prompt_ids) + token_limit(request, self._runtime.context_length)
        if not self.budget.fits([reserved]):
            raise ResourceExhausted(
                f"the request may need {self.budget.need([reserved]) >> 20} MiB of KV cache (prompt + max_tokens "
                f"= {reserved} tokens); the budget is {self.budget.budget_bytes >> 20} MiB")
        return self.budget.fits([live.reserved for live in self._admitted] + [reserved])

    def _start(self, request: GenerationRequest) -> LiveRequest:
        runtime = self._runtime
        if request.images and runtime.image_encoder is None:
            raise Unsupported("this model is text-only; it cannot take images")
        limit = token_limit(request, runtime.context_length)
        output = RequestOutput(request, limit, runtime.decode_text, runtime.byte_fallback_ids, runtime.eos_ids,
                               runtime.special_ids)
        live = LiveRequest(request, output, next(self._rows), len(request.prompt_ids) + limit)
        cache = None
        if live.prefix_cacheable:
            length, cache = self.prefix_cache.lookup(request.prompt_ids[:-1], self._runner.new_cache)
            live.prefilled = output.cached_tokens = length
        top = request.top_logprobs if request.logprobs else None
        self._runner.open(live.row, request.sampling, request.prompt_ids, top, cache, request.constraint)
        if self._speculator is not None:  # a constrained row's drafts are cut where its grammar refuses them
            self._speculator.start(live.row, request.prompt_ids, request.speculation)
        return live

    # -- prefill -------------------------------------------------------------------------------------------------

    def _prefill_chunks(self, out: list[Routed]) -> None:
        """One chunk of the oldest request still prefilling; then, while the step's chunk of prompt tokens has
        room (PACKED_PREFILLS), the whole remaining prompts of the next ones, each its own forward pass (a request
        after one that took nothing, cancelled or wholly cached, takes a chunk as the oldest does)."""
        chunk = room = self._options.prefill_chunk_size
        for live in [live for live in self._admitted if live.phase is Phase.PREFILL]:
            room -= self._prefill_one_chunk(live, out, room, whole=room < chunk)
            if room <= 0 or not PACKED_PREFILLS:
                return

    def _prefill_one_chunk(self, live: LiveRequest, out: list[Routed], room: int, whole: bool = False) -> int:
        """A chunk of at most `room` prompt tokens prefilled for the request (`whole`: only if the rest of its prompt
        fits, else none); the tokens it took (all the room after a failure: a failed forward may have been slow)."""
        if self._end_ifgone(live, out):
            return 0
        request, prompt = live.request, live.request.prompt_ids
        try:
            chunk = min(room, self._options.prefill_chunk_size)
            if request.prompt_logprobs:
                chunk = min(chunk, SCORED_CHUNK_TOKENS)
            end = chunk_end(live.prefilled, chunk, len(prompt) - 1, request.images)
            period = self._memory.snapshot_period(live.prefix_cacheable)
            if period:
                end = min(end, (live.prefilled // period + 1) * period)  # stop at the next snapshot position
            if whole and (end < len(prompt) - 1 or end - live.prefilled > room):
                return 0  # a part of a long prompt, or an image's span past the room: its chunk comes later
            taken = end - live.prefilled
            if end > live.prefilled:
                ids = prompt[live.prefilled:end]
                images = [(image.position - live.prefilled, image) for image in request.images
                          if live.prefilled <= image.position < end]
                if request.prompt_logprobs:
                    targets = prompt[live.prefilled + 1:end + 1]
                    live.output.prompt_logprobs += self._runner.prefill_scored(
                        live.row, ids, targets, request.top_logprobs, images)
                else:
                    self._runner.prefill(live.row, ids, images)
                live.prefilled = end
        except Exception as error:
            self._end(live, live.output.fail(as_mlxd_error(error, request)), out)
            release_memory(error)
            return room
        if live.prefilled < len(prompt) - 1 and period and live.prefilled % period == 0:
            self._memory.snapshot(live.row, prompt[:live.prefilled])
        if live.prefilled >= len(prompt) - 1:
            self._memory.prompt_prefilled(live.row, prompt, live.output.cached_tokens, live.prefix_cacheable)
            live.phase = Phase.DECODE
            self._runner.join(live.row, prompt[-1])
            live.in_batch = True
        return taken

    # -- decode --------------------------------------------------------------------------------------------------

    def _decode_one_step(self, out: list[Routed]) -> None:
        for live in self._admitted:
            if live.in_batch and not self._end_ifgone(live, out) and live.queued >= live.output.limit:
                self._leave_batch(live)  # its last token is queued; the step that reads it comes next
        by_row = {live.row: live for live in self._admitted}
        try:
            drafts, started = self._drafts(by_row, out)
            stepping = [live for live in self._admitted if live.in_batch]
            results = self._runner.step(drafts)
        except Exception as error:
            # One forward pass serves every row, so a failure inside it ends them all; the worker goes on.
            held = self._runner.batch_rows()
            for live in self._admitted:
                if live.row in held and live.phase is not Phase.DONE:
                    self._end(live, live.output.fail(as_mlxd_error(error, live.request)), out)
            self._runner.reset_batch()
            release_memory(error)
            return
        if self._speculator is not None and stepping:  # its rows fed L tokens each (1 + the most drafts): timed
            width = 1 + max(map(len, drafts.values()), default=0)
            seconds = time.perf_counter() - started
            self._speculator.timed(len(stepping), width, seconds)
            if log.isEnabledFor(logging.DEBUG):  # what the speculation policy saw, step by step
                log.debug("step: %d rows, width %d, %.2f ms (drafting %.2f%s); %s", len(stepping), width,
                          seconds * 1e3, self._drafting_seconds * 1e3 if drafts else 0.0,
                          ", drained" if self._drained else "", self._speculator.describe(len(stepping)))
        self._deliver(results, by_row, drafts, out)
        for live in stepping:  # a verify step's tokens are all read: none is left queued
            live.queued = len(live.output.generated) if drafts else live.queued + 1

    def _drafts(self, by_row: dict[RowId, LiveRequest], out: list[Routed]) -> tuple[dict[RowId, list[int]], float]:
        """The rows' drafts for the next step (none without a speculator, or when no row's depth is above 0) and
        when the step began. Drafts continue a row's last token, so the step still queued is read first (the
        pipeline pauses); the step is timed from after that pause, its drafting included (engine/step_costs.py
        says why the pause is left out)."""
        spec = self._speculator
        self._drained = False
        if spec is None or (PLAIN_WHILE_PREFILLING and any(live.phase is Phase.PREFILL for live in self._admitted)):
            return {}, time.perf_counter()
        rooms = {live.row: live.output.limit - len(live.output.generated) for live in self._admitted
                 if live.in_batch}
        pending = [live.row for live in self._admitted if live.in_batch and live.queued > len(live.output.generated)]
        if not spec.wants_drafts(rooms, pending):
            return {}, time.perf_counter()  # each n-gram row noted its probe while looking its drafts up
        self._drained = bool(pending)  # a drained step that drafts nothing after all shows as width 1, drained
        self._deliver(self._runner.flush(), by_row, {}, out)
        started = time.perf_counter()
        drafts = spec.drafts({row: room for row, room in rooms.items() if by_row[row].in_batch})
        self._drafting_seconds = time.perf_counter() - started
        return drafts, started

    def _deliver(self, results: list[StepResult], by_row: dict[RowId, LiveRequest], drafts: dict[RowId, list[int]],
                 out: list[Routed]) -> None:
        for result in results:
            owner = by_row.get(result.row)
            if self._speculator is not None:
                self._speculator.observe(result.row, drafts.get(result.row, []), result.tokens)
            if owner is not None and owner.phase is not Phase.DONE and result.error is not None:
                self._end(owner, owner.output.fail(as_mlxd_error(result.error, owner.request)), out)
            elif owner is not None and owner.phase is not Phase.DONE:
                owner.output.count_drafts(len(drafts.get(result.row, [])), len(result.tokens) - 1)
                events = owner.output.accept_run(result.tokens, result.logprobs, completes=result.constraint_done)
                if owner.output.done:
                    self._end(owner, events, out)
                else:
                    out += [(owner.request, event) for event in events]

    def _apply_backpressure(self, out: list[Routed]) -> None:
        """Park the rows whose reader fell `max_stream_backlog` events behind; bring them back once it caught up
        to half that; end those parked longer than `stalled_stream_seconds`."""
        limit = self._options.max_stream_backlog
        if not limit:
            return
        now = time.monotonic()
        for live in self._admitted:
            if live.phase is Phase.DECODE and live.in_batch and live.request.events.backlog() >= limit:
                live.phase, live.paused_at, live.in_batch = Phase.PAUSED, now, False
                self._runner.park(live.row)
                log.info("request %r paused: its client has not read %d events", live.request.request_id, limit)
            elif live.phase is Phase.PAUSED and not self._end_ifgone(live, out):
                if live.request.events.backlog() <= limit // 2:
                    live.phase, live.in_batch = Phase.DECODE, True
                    generated = live.output.generated
                    self._runner.join(live.row, generated[-1] if generated else live.request.prompt_ids[-1])
                elif now - live.paused_at >= self._options.stalled_stream_seconds:
                    log.warning("request %r cancelled: its client read nothing for %.0f s",
                                live.request.request_id, now - live.paused_at)
                    self._end(live, live.output.finish(FinishReason.CANCELLED), out)

    # -- ending --------------------------------------------------------------------------------------------------

    def _end_ifgone(self, live: LiveRequest, out: list[Routed]) -> bool:
        """End the request if its client cancelled or its deadline passed."""
        request = live.request
        if request.deadline_passed():
            request.cancel.cancel("deadline")
            error = DeadlineExceeded(f"request {request.request_id!r} passed its deadline")
            self._end(live, live.output.fail(error), out)
            return True
        if request.cancel.is_set:
            self._end(live, live.output.finish(FinishReason.CANCELLED), out)
            return True
        return False

    def _end(self, live: LiveRequest, events: list[Event], out: list[Routed]) -> None:
        """The request is done: free its row (storing its prompt and answer first when they are worth it)."""
        if live.in_batch:
            self._leave_batch(live)
        else:
            self._runner.close(live.row)
        live.phase = Phase.DONE
        if self._speculator is not None:
            self._speculator.forget(live.row)
        out += [(live.request, event) for event in events]

    def _leave_batch(self, live: LiveRequest) -> None:
        live.in_batch = False
        keep = self._memory.keeps_answer(live.prefix_cacheable, len(live.output.generated))
        caches = self._runner.close(live.row, keep_cache=keep)
        if caches is not None:
            self._memory.remember_answer(live.request.prompt_ids, live.output.generated, caches)
