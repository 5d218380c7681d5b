"""One in-process engine that bench/cpu_anchors.py compares mlxd against, as a child process.

    python bench/cpu_engines.py --engine mlx-lm --model MLX_FOLDER
    python bench/cpu_engines.py --engine llama-cpp --model FILE.gguf --threads 2

It loads the model, prints {"ready": ...}, then answers each stdin line {"prompt": [ids], "new_tokens": N}
with one JSON line: seconds to the first token (prefill plus one sampled token) and seconds for the tokens after
it, greedy, ignoring end-of-sequence. A process of its own keeps each engine's thread pool off the others'.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def prompt_ids(vocab_size: int, n: int, salt: int = 0) -> list[int]:
    """A fixed pseudo-random prompt; a different salt changes every token (no shared prefix to cache)."""
    return [((i + 1009 * salt) * 7919 + 13) % (vocab_size - 10) + 5 for i in range(n)]


def mlx_lm_engine(model_dir: Path, _threads: int) -> tuple[Callable[[list[int], int], Iterator[int]], dict]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    model, config = load_model(model_dir)

    def generate(prompt: list[int], new_tokens: int) -> Iterator[int]:
        steps = generate_step(mx.array(prompt), model, max_tokens=new_tokens, sampler=lambda x: mx.argmax(x, -1))
        for token, _ in steps:
            yield token

    return generate, {"vocab_size": config["vocab_size"], "quantization": config.get("quantization")}


def llama_cpp_engine(gguf: Path, threads: int) -> tuple[Callable[[list[int], int], Iterator[int]], dict]:
    import llama_cpp
    import numpy as np

    # n_batch/n_ubatch stay at llama-cpp-python's defaults (512): what its users get.
    llm = llama_cpp.Llama(str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)

    vocab = llm.n_vocab()

    def generate(prompt: list[int], new_tokens: int) -> Iterator[int]:
        # Low-level eval and argmax of the last row of logits: llama.cpp's own speed, without
        # llama-cpp-python's sampler chain in Python.
        llm.reset()
        llm.eval(prompt)
        for n in range(new_tokens):
            token = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(vocab,))))
            yield token
            if n + 1 < new_tokens:
                llm.eval([token])

    return generate, {"vocab_size": vocab, "llama_cpp": llama_cpp.__version__,
                      "system_info": llama_cpp.llama_print_system_info().decode()}


ENGINES = {"mlx-lm": mlx_lm_engine, "llama-cpp": llama_cpp_engine}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=sorted(ENGINES), required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    generate, info = ENGINES[args.engine](args.model, args.threads)
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        start = time.perf_counter()
        first = None
        tokens = []
        for token in generate(job["prompt"], job["new_tokens"]):
            if first is None:
                first = time.perf_counter()
            tokens.append(token)
        end = time.perf_counter()
        print(json.dumps({"ttft_s": first - start, "decode_s": end - first, "prompt_tokens": len(job["prompt"]),
                          "new_tokens": len(tokens), "head": tokens[:8]}), flush=True)


if __name__ == "__main__":
    main()
