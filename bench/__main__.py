"""python -m bench <name> [options]: run one benchmark (or a model-making tool); with no name, list them.

Run from the repository root with a Python that has mlxd installed (.venv) or, for the anchors that need mlx-lm
and llama.cpp, the bench venv (`bash scripts/bench_env.sh` once, then `.bench-venv/bin/python -m bench ...`).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, what it measures, against what)
BENCHMARKS = {
    "grpc_vs_inprocess": ("bench.suite.grpc_vs_inprocess",
                          "one stream's prefill and decode tok/s over gRPC, against the engine without gRPC "
                          "[and mlx-lm's generate_step]"),
    "batch_throughput": ("bench.suite.batch_throughput",
                         "aggregate tok/s of N gRPC streams, against mlx-lm's BatchGenerator"),
    "batch_inprocess": ("bench.suite.batch_inprocess",
                        "the engine's batched decode without gRPC; where a step's time goes (--breakdown)"),
    "cpu_anchors": ("bench.suite.cpu_anchors",
                    "CPU prefill and decode over gRPC, against mlx-lm and llama.cpp on the same weights"),
    "cpu_concurrency": ("bench.suite.cpu_concurrency",
                        "aggregate tok/s of 1..N streams against one stream; TTFT with a shared prefix"),
    "prefix_ttft": ("bench.suite.prefix_ttft", "time to first token with a cached prefix, against a cold one"),
    "vlm_ttft": ("bench.suite.vlm_ttft", "a vision request's TTFT split into preprocessing, vision and prefill"),
    "health_latency": ("bench.suite.health_latency", "Health Check latency with the worker saturated, against idle"),
    "decode_profile": ("bench.suite.decode_profile",
                       "where one sequence's decode step goes (attention, MLP/MoE, output layer), against mlx-lm"),
    "batch_step_profile": ("bench.suite.batch_step_profile",
                           "where an N-row decode step goes (attention, linear attention, MLP/MoE), against mlx-lm"),
    "latent_layer_parts": ("bench.suite.latent_layer_parts",
                           "one routed MLA layer (GLM-4.7-Flash) in parts, each timed at a decode step's size"),
    "expert_matmul": ("bench.suite.expert_matmul",
                      "a MoE step's routed-expert matmul: the CUDA kernel against MLX's gathered matmul, per size"),
    "dense_rows": ("bench.suite.dense_rows",
                   "a dense 4-bit layer at a decode batch's rows: MLX's quantized matmul batched against flattened"),
    "speculative": ("bench.suite.speculative",
                    "effective tok/s and acceptance of speculative decoding (n-gram or a draft model), against plain"),
    "speculation_replay": ("bench.suite.speculation_replay",
                           "the n-gram speculation policy replayed over recorded generations at given step costs"),
    "draft_policy": ("bench.suite.draft_policy",
                     "the draft-model speculation policy stepped at given step costs (no model), against plain"),
    "speculation_inprocess": ("bench.suite.speculation_inprocess",
                              "n-gram speculation against plain in one in-process Scheduler; --profile: its parts"),
    "attention_plans": ("bench.suite.attention_plans",
                        "the first call of attention at each new shape (cuDNN plans on CUDA), against later calls"),
    "prefill_profile": ("bench.suite.prefill_profile",
                        "one long prefill, mlxd's runner against mlx-lm's model, whole and without each part"),
    "prefill_chunks": ("bench.suite.prefill_chunks",
                       "TTFT of long prompts at each prefill chunk size (and a variant): where a prefill's time goes"),
    "compile_watch": ("bench.suite.compile_watch",
                      "the kernels MLX compiles after the daemon's warm-up (GPU), and the steps they stalled"),
    "first_requests": ("bench.suite.first_requests",
                       "the first two requests of each kind after the warm-up: kernels compiled inside a request"),
    "prompt_lengths": ("bench.suite.prompt_lengths",
                       "TTFT of prompts each of a new length, as the code stands against a --variant"),
    "verify_step": ("bench.suite.verify_step",
                    "one synchronous verify step per width, rows and context, against a plain step [and --variant]"),
    "admission": ("bench.suite.admission",
                  "a burst of short prompts beside a decoding stream: first tokens, packed prefills vs one a step"),
    "constrained_decode": ("bench.suite.constrained_decode",
                           "decode tok/s under a JSON Schema, against the same streams unconstrained; mask times"),
    "gil_waits": ("bench.suite.gil_waits",
                  "each daemon thread's time running, waiting for the GIL or blocked under gRPC load (py-spy)"),
    "mask_memory": ("bench.suite.mask_memory",
                    "a step reading host-written masks: managed memory as MLX leaves it, advised, copied, resident"),
    "mask_threads": ("bench.suite.mask_threads",
                     "whether llguidance fills rows' masks in parallel: N threads against 1, wall against CPU time"),
    "host_contention": ("bench.suite.host_contention",
                        "16 free streams in-process with busy processes on the worker's sibling CPU or other cores"),
    "tp_probe": ("bench.suite.tp_probe", "whether MLX's NCCL backend runs two ranks on one GPU (issue 23)"),
    "tensor_parallel": ("bench.suite.tensor_parallel",
                        "prefill, decode and 4 streams' tok/s with --tensor-parallel 2, against 1 rank"),
}
TOOLS = {
    "nvrtc_compile": ("bench.kernels.nvrtc_compile",
                      "compile the routed-experts CUDA kernels with NVRTC on a machine without a GPU"),
    "sass_stats": ("bench.kernels.sass_stats",
                   "registers and machine instructions of the experts kernels for the H200, without a GPU"),
    "mirror_experts_few": ("bench.kernels.mirror_experts_few",
                           "the few-pairs experts kernel mirrored in NumPy, against MLX's gathered matmul (CPU)"),
    "pyspy_top": ("bench.kernels.pyspy_top", "summarise py-spy's raw stacks: own and inclusive samples per frame"),
    "random_model": ("bench.models.random_model", "write a random-weight Hugging Face folder of a published shape"),
    "llama_gguf": ("bench.models.llama_gguf", "write a random-weight Llama GGUF that mlxd, mlx-lm and llama.cpp run"),
    "mlx_export": ("bench.models.mlx_export", "save the arrays mlxd serves from a GGUF as a folder mlx-lm loads"),
}


def usage() -> str:
    lines = ["usage: python -m bench <name> [options]   (python -m bench <name> --help for its options)", "",
             "benchmarks:"]
    lines += [f"  {name:18} {what}" for name, (_, what) in BENCHMARKS.items()]
    lines += ["", "tools:"] + [f"  {name:18} {what}" for name, (_, what) in TOOLS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    commands = {**BENCHMARKS, **TOOLS}
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in commands:
        print(f"unknown benchmark {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[argv[0]][0])
    sys.argv = [f"python -m bench {argv[0]}", *argv[1:]]  # so argparse names the command in its messages
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
