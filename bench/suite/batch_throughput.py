"""Concurrent streams: aggregate tok/s of N gRPC streams into `mlxd serve` (continuous batching) against mlx-lm's
BatchGenerator on the same weights in a process of its own, for each N, alternating in one command.

    python -m bench batch_throughput [--model smollm2|PATH --streams 1 4 16 --prompt-tokens 128 --new-tokens 256]
    .bench-venv/bin/python -m bench batch_throughput --model /tmp/llama-8b --mlx-lm [--mixed]

Every stream is greedy with ignore_eos, so both engines generate exactly streams x new-tokens tokens. "total"
counts wall time from the first request to the last token (prefill included); "decode" counts from the moment
every stream has its first token. Prints medians of the rounds and of the per-round ratios last.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time

from bench import common
from bench.anchors import batch
from bench.daemon import Daemon
from mlxd_client import Client


def over_grpc(addr: str, prompts: list[list[int]], new_tokens: int) -> common.Row:
    """One client per stream, all started together: the daemon batches whatever is in flight."""
    firsts: list[float] = []
    counts = [0] * len(prompts)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            with Client(addr) as client:
                for response in client.generate(tokens=prompts[i], temperature=0.0, ignore_eos=True,
                                                max_tokens=new_tokens):
                    if response.HasField("chunk") and response.chunk.token_ids:
                        if counts[i] == 0:
                            with lock:
                                firsts.append(time.perf_counter())
                        counts[i] += len(response.chunk.token_ids)
        except BaseException as error:  # raised below, so a failed stream is not hidden behind a missing rate
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(prompts)} streams failed; the first: {errors[0]!r}") from errors[0]
    return common.batch_rates(start, max(firsts), time.perf_counter(), sum(counts), len(prompts))


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--mixed", action="store_true", help="prompt lengths spread around --prompt-tokens")
    p.add_argument("--rounds", type=int, default=3, help="alternations per stream count (after a warm-up)")
    p.add_argument("--mlx-lm", action="store_true", help="also mlx-lm's BatchGenerator (the bench venv has it)")
    p.add_argument("--serve-arg", action="append", default=[], help="an extra `mlxd serve` argument (repeat)")
    common.add_out_arg(p, "batch_throughput")
    args = p.parse_args(argv)
    model = common.resolve_model(args.model)

    with contextlib.ExitStack() as stack:
        daemon = stack.enter_context(Daemon(model, args.out, "--dtype", args.dtype, "--max-batch-size",
                                            str(max(args.streams)), *args.serve_arg))
        with Client(daemon.addr) as client:
            vocab = client.model_info().vocab_size
        runs = {"mlxd": functools.partial(over_grpc, daemon.addr)}
        if args.mlx_lm:
            anchor = stack.enter_context(batch.start(common.mlx_lm_folder(model, args.dtype), common.blas_env(),
                                                     args.out / "mlx-lm.log"))
            runs["mlx-lm"] = functools.partial(batch.run, anchor)

        def prompts(streams: int, round_: int) -> list[list[int]]:
            # New prompts each round: the same ones again would be served from mlxd's prefix cache (mlx-lm keeps
            # none), and its prefill would not be measured at all.
            return common.stream_prompts(vocab, streams, args.prompt_tokens, args.mixed, salt=round_)

        for n in args.streams:  # warm-up at each batch size
            for run in runs.values():
                run(prompts(n, 0), min(args.new_tokens, 16))
        rows = common.alternate(args.rounds, args.streams, runs,
                                lambda name, n, round_: runs[name](prompts(n, round_), args.new_tokens),
                                args.out / "runs.jsonl")

    print(f"\n{model}: prompts of {args.prompt_tokens} tokens{' (mixed lengths)' if args.mixed else ''}, "
          f"{args.new_tokens} new tokens per stream, medians of {args.rounds} rounds; logs in {args.out}")
    header = ["streams", "mlxd total", "mlxd decode"]
    if args.mlx_lm:
        header += ["mlx-lm total", "mlx-lm decode", "ratio total", "ratio decode"]
    lines = []
    for n in args.streams:
        line = [n] + [common.median(rows, k, case=n, contender="mlxd") for k in ("total_tps", "decode_tps")]
        if args.mlx_lm:
            line += [common.median(rows, k, case=n, contender="mlx-lm") for k in ("total_tps", "decode_tps")]
            line += [common.median_ratio(rows, k, "mlxd", "mlx-lm", case=n) for k in ("total_tps", "decode_tps")]
        lines.append(line)
    print(common.table(header, lines))
    if args.mlx_lm:
        print("ratios: mlxd / mlx-lm, the median of per-round ratios")
