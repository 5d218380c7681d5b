"""Decode with mlxd's engine in this process (no gRPC): the anchor for bench/grpc_vs_inprocess.py.

Prints one JSON line per run: prefill and decode tokens/s as the engine measures them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx

from mlxd.engine.request import ErrorEvent, FinalEvent, GenerationRequest
from mlxd.engine.scheduler import ModelRuntime, run_to_completion
from mlxd.engine.warmup import warm_up
from mlxd.generation.params import SamplingParams
from mlxd.launcher import blas_note
from mlxd.loading.model_source import load_model_and_tokenizer


def prompt_ids(vocab_size: int, n: int) -> list[int]:
    """A fixed pseudo-random prompt, the same in every process of the benchmark."""
    return [(i * 7919 + 13) % (vocab_size - 10) + 5 for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    mx.set_default_stream(mx.new_stream(mx.default_device()))
    loaded, tokenizer = load_model_and_tokenizer(args.model, args.dtype)
    runtime = ModelRuntime(loaded.model, tokenizer.decode, tokenizer.byte_fallback_ids, frozenset(),
                           loaded.context_length, loaded.vocab_size)
    warm_up(runtime)
    print(json.dumps({"note": f"{blas_note()}; {loaded.load_note}"}), file=sys.stderr)
    for run in range(args.runs + 1):  # the first run warms up (kernels, allocator, GPU clocks) and is not reported
        request = GenerationRequest(f"bench-{run}", prompt_ids(loaded.vocab_size, args.prompt_tokens),
                                    SamplingParams(temperature=0.0), max_tokens=args.new_tokens, ignore_eos=True)
        for event in run_to_completion(runtime, request):
            if isinstance(event, ErrorEvent):
                raise event.error
            if isinstance(event, FinalEvent) and run:
                t = event.timings
                print(json.dumps({"prefill_tps": t.prefill_tokens_per_second,
                                  "decode_tps": t.decode_tokens_per_second,
                                  "tokens": event.completion_tokens}), flush=True)


if __name__ == "__main__":
    main()
