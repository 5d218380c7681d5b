"""One engine generating a single stream in a process of its own, timed there: mlxd's engine without gRPC,
mlx-lm's generate_step, or llama.cpp (llama-cpp-python). The anchors of grpc_vs_inprocess and cpu_anchors.

    python -m bench.anchors.generate --engine mlxd|mlx-lm|llama-cpp --model PATH [--dtype auto --threads 2]

Speaks bench/anchors/protocol.py: each job {"prompt": [ids], "new_tokens": N} is generated greedily, ignoring
end-of-sequence, and answered with bench.common.Timer's result. mlx-lm and llama-cpp-python are not mlxd
dependencies: they come with the bench venv (scripts/bench_env.sh).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.anchors.protocol import EngineProcess, Job, config_vocab_size, serve
from bench.common import Row, Timer, with_rates

# (prompt ids, new tokens) -> the new tokens, in the groups the engine hands them out
Generate = Callable[[list[int], int], Iterator[list[int]]]


def mlxd_engine(model: Path, dtype: str, _threads: int) -> tuple[Generate, Job]:
    """mlxd's engine as the worker drives it (one scheduler, stepped until the request is done), minus gRPC."""
    import mlx.core as mx

    from mlxd.engine.request import ErrorEvent, GenerationRequest, TokenEvent
    from mlxd.engine.runtime import ModelRuntime
    from mlxd.engine.scheduler import Scheduler, SchedulerOptions
    from mlxd.engine.warmup import warm_up
    from mlxd.generation.params import SamplingParams
    from mlxd.launcher import blas_note
    from mlxd.loading.model_source import load_model_and_tokenizer

    mx.set_default_stream(mx.new_stream(mx.default_device()))
    loaded, tokenizer = load_model_and_tokenizer(model, dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    warm_up(runtime)
    # One scheduler for every job, as the daemon keeps one: its KV budget is measured once, not inside a timing.
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=512))
    ids = itertools.count()

    def generate(prompt: list[int], new_tokens: int) -> Iterator[list[int]]:
        scheduler.add(GenerationRequest(f"bench-{next(ids)}", prompt, SamplingParams(temperature=0.0),
                                        max_tokens=new_tokens, ignore_eos=True))
        while scheduler.has_work():
            for _, event in scheduler.step():
                if isinstance(event, ErrorEvent):
                    raise event.error
                if isinstance(event, TokenEvent) and event.token_ids:
                    yield event.token_ids

    return generate, {"vocab_size": loaded.vocab_size, "note": f"{blas_note()}; {loaded.load_note}"}


def mlx_lm_engine(model: Path, _dtype: str, _threads: int) -> tuple[Generate, Job]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    mlx_model, config = load_model(model)

    def generate(prompt: list[int], new_tokens: int) -> Iterator[list[int]]:
        steps = generate_step(mx.array(prompt), mlx_model, max_tokens=new_tokens, sampler=lambda x: mx.argmax(x, -1))
        for token, _ in steps:
            yield [int(token)]

    return generate, {"vocab_size": config_vocab_size(config), "quantization": config.get("quantization")}


def llama_cpp_engine(gguf: Path, _dtype: str, threads: int) -> tuple[Generate, Job]:
    import llama_cpp
    import numpy as np

    # n_batch/n_ubatch stay at llama-cpp-python's defaults (512): what its users get.
    llm = llama_cpp.Llama(str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    vocab = llm.n_vocab()

    def generate(prompt: list[int], new_tokens: int) -> Iterator[list[int]]:
        # Low-level eval and argmax of the last row of logits: llama.cpp's own speed, without
        # llama-cpp-python's sampler chain in Python.
        llm.reset()
        llm.eval(prompt)
        for n in range(new_tokens):
            token = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(vocab,))))
            yield [token]
            if n + 1 < new_tokens:
                llm.eval([token])

    return generate, {"vocab_size": vocab, "llama_cpp": llama_cpp.__version__,
                      "system_info": llama_cpp.llama_print_system_info().decode()}


ENGINES = {"mlxd": mlxd_engine, "mlx-lm": mlx_lm_engine, "llama-cpp": llama_cpp_engine}


def start(engine: str, model: Path, env: dict[str, str], log: Path, *args: str) -> EngineProcess:
    """The benchmark's side: `engine` on `model` in a process of its own."""
    return EngineProcess("generate", ["--engine", engine, "--model", str(model), *args], env, log)


def run(process: EngineProcess, prompt: list[int], new_tokens: int) -> Row:
    """One timed generation in that process, with its rates (bench.common.with_rates)."""
    return with_rates(process.ask({"prompt": prompt, "new_tokens": new_tokens}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=sorted(ENGINES), required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="auto", help="mlxd only: as `mlxd serve --dtype`")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp only (the others read OPENBLAS_NUM_THREADS)")
    args = parser.parse_args()
    generate, info = ENGINES[args.engine](args.model, args.dtype, args.threads)

    def handle(job: Job) -> Job:
        timer = Timer()
        for tokens in generate(job["prompt"], job["new_tokens"]):
            timer.got(tokens)
        return timer.result(len(job["prompt"]))

    serve(handle, info)


if __name__ == "__main__":
    main()
