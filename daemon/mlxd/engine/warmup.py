"""Run one tiny generation before the daemon reports SERVING, so the first real request does not pay for
kernel compilation and first-touch allocation."""

from __future__ import annotations

import mlx.core as mx

from mlxd.engine.request import ErrorEvent, GenerationRequest
from mlxd.engine.scheduler import ModelRuntime, run_to_completion
from mlxd.generation.sampling import SamplingParams


def warm_up(runtime: ModelRuntime, prompt_len: int = 8, new_tokens: int = 4) -> None:
    ids = [i % runtime.vocab_size for i in range(1, prompt_len + 1)]
    request = GenerationRequest("warmup", ids, SamplingParams(temperature=0.0), max_tokens=new_tokens,
                                ignore_eos=True)
    # Two prefill chunks, then decode steps: every code path a request takes.
    for event in run_to_completion(runtime, request, prefill_chunk_size=prompt_len // 2):
        if isinstance(event, ErrorEvent):
            raise event.error
    mx.clear_cache()
