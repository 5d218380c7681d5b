"""Run one tiny generation before the daemon reports SERVING, so the first real request does not pay for
kernel compilation and first-touch allocation."""

from __future__ import annotations

from collections.abc import Iterable

import mlx.core as mx
import numpy as np

from mlxd.engine.draft_model import DraftModel
from mlxd.engine.request import ErrorEvent, Event, GenerationRequest, PromptImage
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams


def warm_up(runtime: ModelRuntime, prompt_len: int = 8, new_tokens: int = 4, speculate: str = "",
            speculate_depth: int = 0, batch_rows: int = 1) -> None:
    ids = [i % runtime.vocab_size for i in range(1, prompt_len + 1)]
    request = GenerationRequest("warmup", ids, SamplingParams(temperature=0.0), max_tokens=new_tokens,
                                ignore_eos=True)
    # Two prefill chunks, then decode steps: every code path a request takes.
    _run(runtime, request, SchedulerOptions(prompt_len // 2))
    if runtime.image_encoder is not None:
        _run(runtime, _image_request(runtime, ids, new_tokens), SchedulerOptions(prompt_len))
    if (speculate or runtime.draft_model is not None) and speculate_depth > 0:
        _warm_up_verify_steps(runtime, ids, speculate, speculate_depth)
    if runtime.draft_model is not None and speculate_depth > 0:
        _warm_up_catch_up(runtime)
    if mx.default_device().type == mx.gpu:
        warm_up_prefill_widths(runtime)
        warm_up_sampling(runtime, ids, speculate, speculate_depth)
        if batch_rows > 1:
            warm_up_batch(runtime, ids, batch_rows, speculate, speculate_depth)
    mx.clear_cache()


# Rows of a quantized matmul at which MLX's CUDA kernels (0.32) change tile: up to 16, 32, 64, 128, more. Each tile
# is a kernel compiled on its first use (NVRTC, seconds to tens of seconds), and a prompt chunk of T tokens, a batch
# of B rows and a verify step of B x L tokens all pick their tile by those rows.
TILE_ROWS = (16, 32, 64, 128, 256)


def warm_up_prefill_widths(runtime: ModelRuntime) -> None:
    """One prompt chunk at each of TILE_ROWS tokens, so the first prompts of those lengths do not compile. GPU
    only: nothing compiles on the CPU, where 500 tokens of prefill would cost a large model seconds."""
    for rows in TILE_ROWS:
        ids = _filler(runtime, rows + 1)  # the last token is decoded, not prefilled
        _run(runtime, GenerationRequest(f"warmup-prefill-{rows}", ids, SamplingParams(temperature=0.0),
                                        max_tokens=1, ignore_eos=True), SchedulerOptions(rows))


def warm_up_sampling(runtime: ModelRuntime, ids: list[int], speculate: str = "", speculate_depth: int = 0) -> None:
    """Requests through the sampler's every filter with logprobs, and constrained ones (masks applied on the device
    to a sampled row and to a greedy one, whose mask refuses all but one token: OneToken), with speculation also with
    drafts. The requests above are greedy and free, and without these the first request after SERVING that sampled
    (temperature 1 is the protocol's default) waited 20 s for its first token on an H100, the first with logprobs
    11 s (`bench first_requests`, a random 8B drafted by a random 1B): MLX compiling kernels on first use (random
    keys, top-k, sort, cumulative sums, scatters), with every stream batched beside it stalled. GPU only, as the
    prefill widths."""
    sampled = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
                             presence_penalty=0.5, frequency_penalty=0.5, logit_bias={ids[0]: 0.5}, seed=0)
    greedy = SamplingParams(temperature=0.0)
    speculating = bool(speculate or runtime.draft_model is not None) and speculate_depth > 0
    drafting = SchedulerOptions(len(ids), speculate=speculate, speculate_depth=speculate_depth,
                                speculate_adaptive=False)
    for i, (sampling, constrained, logprobs) in enumerate([(sampled, False, True), (greedy, True, False),
                                                           (sampled, True, False)]):
        for name, prompt, options in [(f"warmup-sampling-{i}", ids, SchedulerOptions(len(ids)))] + (
                # the prompt said twice, so prompt lookup finds something to draft; drafts at every step
                [(f"warmup-sampling-verify-{i}", ids + ids, drafting)] if speculating else []):
            _run(runtime, GenerationRequest(name, prompt, sampling, max_tokens=4, ignore_eos=True, logprobs=logprobs,
                                            top_logprobs=5 if logprobs else 0, prompt_logprobs=logprobs,
                                            constraint=(AnyToken if sampling is sampled else OneToken)(
                                                runtime.vocab_size) if constrained else None),
                 options)


class AnyToken:
    """A token constraint allowing every token and never complete: a constrained request's device work (its masks
    uploaded and applied), for the warm-up, without a grammar."""

    def __init__(self, width: int) -> None:
        self.mask_words = (width + 31) // 32  # bit t of word t // 32: token t

    def fill_bitmask(self, out: np.ndarray) -> None:
        out[:] = -1

    def consume(self, token: int) -> None:
        pass

    def is_stopped(self) -> bool:
        return False

    def rollback(self, tokens: int) -> None:
        pass


class OneToken(AnyToken):
    """Allows token 1 only: a greedy request under it meets the masked greedy step (a GPU's steps mask:
    engine/checked_greedy.py) with a mask that changes its argmax."""

    def fill_bitmask(self, out: np.ndarray) -> None:
        out[:] = 0
        out[0] = 2


def warm_up_batch(runtime: ModelRuntime, ids: list[int], rows: int, speculate: str = "",
                  speculate_depth: int = 0) -> None:
    """Decode steps of every batch size from 1 to `rows`: the batch grows by one request a step, then shrinks as
    they end. On an H200 a SmolLM2 Q4_1 daemon warmed with one sequence stalled every stream for 28 s at the first
    step of 8 rows, and for 2-4 s at 14 and 15 (MLX compiling its quantized-matmul kernels for more rows); a host
    expects a slow start, not a stall mid-stream. With speculation, then the same with every step drafting
    `speculate_depth` tokens a row: verify steps of every batch size, and a draft model's passes at each (its
    quantized matmuls pick their kernel by the rows too), which the one-row warm-ups above do not meet. On an H100
    (session 38: a random 8B drafted by a random 1B, 16 rows) this pass took 5 s of the warm-up's 23 and none of
    its steps a compile's seconds (60-97 ms), where the plain pass's first 2-row step took 1.4 s; so whether a
    batch's first drafting steps would compile inside a request is still open (session 29 suspected it). GPU
    only: nothing compiles on the CPU, where this would cost `rows` steps of a full batch."""
    _grow_and_shrink(runtime, ids, rows, SchedulerOptions(len(ids), max_batch_size=rows), rows + 2)
    if (speculate or runtime.draft_model is not None) and speculate_depth > 0:
        options = SchedulerOptions(len(ids), max_batch_size=rows, speculate=speculate,
                                   speculate_depth=speculate_depth, speculate_adaptive=False)
        # The prompt said twice, so prompt lookup finds something to draft; enough tokens that a batch whose
        # drafts all hold still grows to `rows` before its first request ends.
        _grow_and_shrink(runtime, ids + ids, rows, options, (rows + 2) * (speculate_depth + 1))


def _grow_and_shrink(runtime: ModelRuntime, ids: list[int], rows: int, options: SchedulerOptions,
                     max_tokens: int) -> None:
    scheduler = Scheduler(runtime, options)
    for i in range(rows):
        scheduler.add(GenerationRequest(f"warmup-batch-{i}", ids, SamplingParams(temperature=0.0),
                                        max_tokens=max_tokens, ignore_eos=True))
        _raise_failure(event for _, event in scheduler.step())
    while scheduler.has_work():
        _raise_failure(event for _, event in scheduler.step())


def _raise_failure(events: Iterable[Event]) -> None:
    for event in events:
        if isinstance(event, ErrorEvent):
            raise event.error


def _warm_up_verify_steps(runtime: ModelRuntime, ids: list[int], speculate: str, depth: int) -> None:
    """Verify steps of every width the adaptive depth may pick (and the draft model's passes): on a GPU the
    first step of a new width compiled kernels for seconds, inside the first requests that speculated."""
    options = SchedulerOptions(len(ids), speculate=speculate, speculate_depth=depth, speculate_adaptive=False)
    for cap in range(1, depth + 1):
        # The prompt said twice, so prompt lookup finds something to draft.
        _run(runtime, GenerationRequest(f"warmup-verify-{cap}", ids + ids, SamplingParams(temperature=0.0),
                                        max_tokens=cap + 3, ignore_eos=True, speculation=cap), options)


def _image_request(runtime: ModelRuntime, ids: list[int], new_tokens: int) -> GenerationRequest:
    """A blank image between two text tokens, so the vision tower and the image attention mask compile too."""
    assert runtime.image_encoder is not None
    tokens = runtime.image_encoder.model.image_tokens
    pixels = np.zeros((3, tokens.image_size, tokens.image_size), dtype=np.float32)
    # Not a hex digest, so no real image can ever hit this cache entry.
    image = PromptImage(position=2, length=tokens.per_image, pixels=pixels, digest="warm-up")
    return GenerationRequest("warmup-image", ids[:1] + tokens.span() + ids[1:2], SamplingParams(temperature=0.0),
                             max_tokens=new_tokens, ignore_eos=True, images=(image,))


def _run(runtime: ModelRuntime, request: GenerationRequest, options: SchedulerOptions) -> None:
    _raise_failure(run_to_completion(runtime, request, options=options))


def run_to_completion(runtime: ModelRuntime, request: GenerationRequest,
                      options: SchedulerOptions | None = None) -> list[Event]:
    """Serve one request on the calling thread with a scheduler of its own (`options`, else the defaults); its
    events, in order. For warm-up and in-process benchmarks: the service goes through the worker instead."""
    scheduler = Scheduler(runtime, options or SchedulerOptions())
    scheduler.add(request)
    events: list[Event] = []
    while scheduler.has_work():
        events += [event for _, event in scheduler.step()]
    return events


def _warm_up_catch_up(runtime: ModelRuntime) -> None:
    """The draft model's catch-up passes of one row at every width they take (powers of two up to 512): a row's
    first drafting step takes in its whole prompt, a probe every token since the last, and on a GPU each new
    width compiled kernels inside a request."""
    assert runtime.draft_model is not None
    for width in (1 << i for i in range(10)):
        draft = DraftModel(runtime.draft_model)
        draft.start(0, _filler(runtime, width))
        draft.draft({0: 1})


def _filler(runtime: ModelRuntime, n: int) -> list[int]:
    """n valid token ids, none of them 0 (often a special token)."""
    return [1 + i % (runtime.vocab_size - 1) for i in range(n)]
