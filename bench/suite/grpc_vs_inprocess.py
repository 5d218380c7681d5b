"""One stream: what gRPC costs. The same greedy generation through `mlxd serve` over gRPC (timed by the client)
and through mlxd's engine without gRPC (the anchor, in a process of its own with the daemon's BLAS), optionally
mlx-lm's generate_step on the same weights, alternating in one command; then the engine on MLX's default CPU
path (checkpoint dtype, reference BLAS) with a shorter workload, to show what the fast path buys.

    python -m bench grpc_vs_inprocess [--model smollm2|PATH --prompt-tokens 256 --new-tokens 128 --rounds 5]
    .bench-venv/bin/python -m bench grpc_vs_inprocess --model /tmp/llama-1b --mlx-lm

Every round sends the same prompt to each engine, so the daemon runs with --prefix-cache-mb 0. Prints medians
of the rounds and of the per-round ratios last.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable
from pathlib import Path

from bench import common
from bench.anchors import generate
from bench.daemon import Daemon
from mlxd_client import Client

GRPC, ENGINE, MLX_LM = "gRPC stream", "engine, no gRPC", "mlx-lm generate_step"
DEFAULT_PATH = "engine, MLX default path"
Stream = Callable[[list[int], int], common.Row]


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help="alternations of the engines (after one warm-up each)")
    p.add_argument("--mlx-lm", action="store_true", help="also mlx-lm's generate_step (the bench venv has it)")
    p.add_argument("--skip-default-path", action="store_true")
    p.add_argument("--default-prompt-tokens", type=int, default=64)
    p.add_argument("--default-new-tokens", type=int, default=16)
    common.add_out_arg(p, "grpc_vs_inprocess")
    args = p.parse_args(argv)
    model = common.resolve_model(args.model)

    with contextlib.ExitStack() as stack:
        daemon = stack.enter_context(Daemon(model, args.out, "--dtype", args.dtype, "--prefix-cache-mb", "0"))
        client = stack.enter_context(Client(daemon.addr))
        vocab = client.model_info().vocab_size
        engine = stack.enter_context(generate.start("mlxd", model, common.blas_env(), args.out / "engine.log",
                                                    "--dtype", args.dtype))
        streams: dict[str, Stream] = {GRPC: functools.partial(common.timed_stream, client),
                                      ENGINE: functools.partial(generate.run, engine)}
        if args.mlx_lm:
            anchor = stack.enter_context(generate.start("mlx-lm", common.mlx_lm_folder(model, args.dtype),
                                                        common.blas_env(), args.out / "mlx-lm.log"))
            streams[MLX_LM] = functools.partial(generate.run, anchor)
        prompt = common.prompt_ids(vocab, args.prompt_tokens)
        for run in streams.values():  # warm-up: kernels, allocator, GPU clocks
            run(prompt, args.new_tokens)
        rows = common.alternate(args.rounds, [args.prompt_tokens], streams,
                                lambda name, _, __: streams[name](prompt, args.new_tokens), args.out / "runs.jsonl")
    if not args.skip_default_path:
        rows += _default_path(model, vocab, args)

    print(f"\n{model}: prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, medians of "
          f"{args.rounds} rounds; logs in {args.out}")
    names = [n for n in (ENGINE, GRPC, MLX_LM, DEFAULT_PATH) if common.select(rows, contender=n)]
    print(common.table(["engine", "prefill tok/s", "decode tok/s"],
                       [[n, common.median(rows, "prefill_tps", contender=n),
                         common.median(rows, "decode_tps", contender=n)] for n in names]))
    for a, b in ((GRPC, ENGINE), (GRPC, MLX_LM), (ENGINE, MLX_LM)):
        if b in names:
            print(f"{a} / {b}: decode {common.median_ratio(rows, 'decode_tps', a, b):.3f}, "
                  f"prefill {common.median_ratio(rows, 'prefill_tps', a, b):.3f} (medians of per-round ratios)")
    if DEFAULT_PATH in names:
        fast, slow = (common.select(rows, contender=n) for n in (ENGINE, DEFAULT_PATH))
        print(f"fast path / MLX default path: prefill "
              f"{common.median(fast, 'prefill_tps') / common.median(slow, 'prefill_tps'):.1f}x, decode "
              f"{common.median(fast, 'decode_tps') / common.median(slow, 'decode_tps'):.1f}x")


def _default_path(model: Path, vocab: int, args: argparse.Namespace) -> list[common.Row]:
    """The engine as MLX's wheel ships on the CPU (checkpoint dtype, reference BLAS): one or two orders of
    magnitude slower there, so a shorter workload, measured once after a warm-up."""
    env = common.child_env()
    for preload in ("LD_PRELOAD", "MLXD_BLAS_PRELOAD"):  # inherited from a shell that preloads OpenBLAS
        env.pop(preload, None)
    prompt = common.prompt_ids(vocab, args.default_prompt_tokens)
    with generate.start("mlxd", model, env, args.out / "engine-default-path.log", "--dtype", "keep") as slow:
        generate.run(slow, prompt, args.default_new_tokens)
        row = generate.run(slow, prompt, args.default_new_tokens)
    return [{"round": 1, "case": args.default_prompt_tokens, "contender": DEFAULT_PATH, **row}]
