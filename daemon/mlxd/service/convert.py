"""Protobuf ⇄ domain: validate a request and build the worker's GenerationRequest; turn events into messages.

generation_request runs on a preparation thread (service/preparation.py), never on the event loop or the worker.
"""

from __future__ import annotations

import time
from typing import Any

from mlxd.engine.request import (
    CancelToken,
    EventSink,
    FinalEvent,
    FinishReason,
    GenerationRequest,
    PromptImage,
    TokenEvent,
    TokenLogprob,
)
from mlxd.errors import InvalidRequest
from mlxd.generation.params import SamplingParams
from mlxd.generation.stops import validate_stops
from mlxd.loading.tokenizer import TokenText
from mlxd.reply import Parsed
from mlxd.service.limits import Limits
from mlxd.service.sizes import PromptBounds, check_token_ids
from mlxd_proto.v1 import inference_pb2 as pb

_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "repetition_window",
                    "presence_penalty", "frequency_penalty")

_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: pb.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}


def sampling_params(options: pb.GenerationOptions, defaults: dict[str, Any], vocab_size: int) -> SamplingParams:
    """Set fields win; unset ones take the model's generation_config defaults, then SamplingParams'."""
    values = {name: getattr(options, name) if options.HasField(name) else defaults[name]
              for name in _SAMPLING_FIELDS if options.HasField(name) or name in defaults}
    params = SamplingParams(**values, logit_bias=dict(options.logit_bias),
                            seed=options.seed if options.HasField("seed") else None)
    params.validate(vocab_size)
    return params


def generation_request(request_id: str, prompt_ids: list[int], options: pb.GenerationOptions, *,
                       defaults: dict[str, Any], vocab_size: int, bounds: PromptBounds, limits: Limits,
                       deadline: float | None, cancel: CancelToken, events: EventSink,
                       images: tuple[PromptImage, ...] = ()) -> GenerationRequest:
    """Validate the options and build the request; its stop strings are compiled here, by the caller's thread."""
    if not prompt_ids:
        raise InvalidRequest("the prompt is empty (no tokens)")
    bounds.check_tokens(len(prompt_ids))
    check_token_ids(options.stop_token_ids, vocab_size, "stop_token_ids")
    validate_stops(options.stop, limits.max_stop_strings, limits.max_stop_length)
    if options.top_logprobs > limits.max_top_logprobs:
        raise InvalidRequest(f"top_logprobs = {options.top_logprobs} exceeds {limits.max_top_logprobs}")
    if options.top_logprobs and not (options.logprobs or options.prompt_logprobs):
        raise InvalidRequest("top_logprobs needs logprobs or prompt_logprobs")
    return GenerationRequest(
        request_id=request_id,
        prompt_ids=prompt_ids,
        sampling=sampling_params(options, defaults, vocab_size),
        max_tokens=options.max_tokens,
        stops=tuple(options.stop),
        stop_token_ids=frozenset(options.stop_token_ids),
        ignore_eos=options.ignore_eos,
        logprobs=options.logprobs,
        top_logprobs=options.top_logprobs,
        prompt_logprobs=options.prompt_logprobs,
        skip_special_tokens=options.HasField("include_special_tokens") and not options.include_special_tokens,
        speculation=options.speculation if options.HasField("speculation") else None,
        images=images,
        deadline=deadline,
        cancel=cancel,
        events=events,
    )


def deadline_of(time_remaining: float | None) -> float | None:
    """The call's deadline as a time.monotonic() value; gRPC reports "none" as None or a huge number, and
    anything beyond a day is treated as none."""
    return time.monotonic() + time_remaining if time_remaining is not None and time_remaining < 86400 else None


def _logprob_pb(lp: TokenLogprob, token_text: TokenText) -> pb.TokenLogprob:
    # A model's logits may be wider than its tokenizer's vocabulary: such ids have no token text.
    return pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob, token=token_text(lp.token_id) or "",
                           top=[pb.TopLogprob(token_id=t.token_id, logprob=t.logprob,
                                              token=token_text(t.token_id) or "") for t in lp.top])


def chunk_message(event: TokenEvent, token_text: TokenText, parsed: Parsed | None = None) -> pb.GenerateResponse:
    """The chunk of event; with parsed (parse_reply), its text is parsed's answer text beside reasoning and calls."""
    chunk = pb.Chunk(text=event.text, token_ids=event.token_ids,
                     logprobs=[_logprob_pb(lp, token_text) for lp in event.logprobs])
    if parsed is not None:
        chunk.text, chunk.reasoning = parsed.text, parsed.reasoning
        chunk.tool_calls.extend(pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in parsed.tool_calls)
    return pb.GenerateResponse(chunk=chunk)


def final_message(event: FinalEvent, request_id: str, token_text: TokenText,
                  ended_in_calls: bool = False) -> pb.GenerateResponse:
    t = event.timings
    return pb.GenerateResponse(final=pb.Final(
        finish_reason=pb.FINISH_REASON_TOOL_CALLS if ended_in_calls else _FINISH[event.finish_reason],
        matched_stop=event.matched_stop,
        stop_token_id=event.stop_token_id,
        usage=pb.Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                       cached_tokens=event.cached_tokens, drafted_tokens=event.drafted_tokens,
                       accepted_draft_tokens=event.accepted_draft_tokens),
        timings=pb.Timings(queue_seconds=t.queue_seconds, time_to_first_token_seconds=t.time_to_first_token_seconds,
                           prefill_tokens_per_second=t.prefill_tokens_per_second,
                           decode_tokens_per_second=t.decode_tokens_per_second, total_seconds=t.total_seconds),
        peak_memory_bytes=event.peak_memory_bytes,
        prompt_logprobs=[_logprob_pb(lp, token_text) for lp in event.prompt_logprobs],
        request_id=request_id,
        constraint_complete=event.constraint_complete,
    ))
