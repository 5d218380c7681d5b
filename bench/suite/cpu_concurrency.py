"""mlxd under concurrent gRPC streams against one stream (the anchor), and time to first token with a shared
2,000-token prefix: cold against a cached prefix and an identical prompt. Measures whatever batching and prefix
caching the daemon on this checkout does; made for the 2-core CPU, runs anywhere.

    nice -n 5 python -m bench cpu_concurrency [--model smollm2|llama-0.4b|PATH --streams 1 4 16]

Aggregate tok/s: C streams started together (distinct prompts, greedy, ignore_eos), all completion tokens over
the wall time from the first request to the last token; the stream counts alternate, rotating, each round.
Shared prefix: per round a new prefix P; TTFT of P+a (cold), then P+b (shares P) and P+a again (identical);
max_tokens 1. Ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from bench import common
from bench.daemon import Daemon
from mlxd_client import Client


def concurrent(client: Client, vocab: int, streams: int, salt: int, args: argparse.Namespace) -> common.Row:
    prompts = common.stream_prompts(vocab, streams, args.prompt_tokens, salt=salt)
    with ThreadPoolExecutor(streams) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda p: common.timed_stream(client, p, args.new_tokens), prompts))
        wall = time.perf_counter() - t0
    return {"aggregate_tps": sum(r["new_tokens"] for r in results) / wall,
            "median_stream_decode_tps": statistics.median(r["decode_tps"] for r in results),
            "median_ttft_s": statistics.median(r["ttft_s"] for r in results)}


def shared_prefix(client: Client, vocab: int, salt: int, args: argparse.Namespace) -> common.Row:
    prefix = common.prompt_ids(vocab, args.prefix_tokens, salt=salt)
    a, b = common.prompt_ids(vocab, 16, salt=salt + 1), common.prompt_ids(vocab, 16, salt=salt + 2)
    runs = {name: common.timed_stream(client, prefix + suffix, 1)
            for name, suffix in (("cold", a), ("shared", b), ("same", a))}
    return {f"{name}_{key}": r[key] for name, r in runs.items() for key in ("ttft_s", "cached_tokens")}


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16], help="the first is the anchor")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prefix-tokens", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="OPENBLAS_NUM_THREADS for the daemon")
    p.add_argument("--mlxd-arg", action="append", default=[], help="an extra `mlxd serve` argument (repeat)")
    common.add_out_arg(p, "cpu_concurrency")
    args = p.parse_args(argv)
    model = common.resolve_model(args.model)
    with Daemon(model, args.out, "--dtype", args.dtype, *args.mlxd_arg,
                env={"OPENBLAS_NUM_THREADS": str(args.threads)}) as daemon, Client(daemon.addr) as client:
        vocab = client.model_info().vocab_size
        for n in args.streams:  # warm-up at each batch size, and of a long prefill
            concurrent(client, vocab, n, 999_999, args)
        shared_prefix(client, vocab, 6_999_990, args)
        conc = common.alternate(args.rounds, ["streams"], args.streams,
                                lambda n, _, round_: concurrent(client, vocab, n, 100_000 * round_ + 1000 * n, args),
                                args.out / "runs.jsonl")
        prefix = common.alternate(args.rounds, ["prefix"], ["mlxd"],
                                  lambda _, __, round_: shared_prefix(client, vocab, 7_000_000 + 10 * round_, args),
                                  args.out / "runs.jsonl")

    print(f"\nmlxd, {model.name}, threads {args.threads}, prompts of {args.prompt_tokens} tokens, {args.new_tokens} "
          f"new tokens per stream, medians of {args.rounds} rounds; logs in {args.out}")
    one = args.streams[0]
    print(common.table(
        ["streams", "aggregate tok/s", "per-stream decode tok/s", "TTFT s", f"vs {one} stream(s)"],
        [[n, common.median(conc, "aggregate_tps", contender=n),
          common.median(conc, "median_stream_decode_tps", contender=n),
          common.median(conc, "median_ttft_s", contender=n),
          common.median_ratio(conc, "aggregate_tps", n, one)] for n in args.streams]))
    cold = common.median(prefix, "cold_ttft_s")
    print(f"{args.prefix_tokens}-token prefix + 16 tokens, TTFT: cold {cold:.3f} s")
    for name in ("shared", "same"):
        ratio = statistics.median(r[f"{name}_ttft_s"] / r["cold_ttft_s"] for r in prefix)
        print(f"  {name:6} {common.median(prefix, f'{name}_ttft_s'):.3f} s, ratio to cold {ratio:.3f}, "
              f"cached tokens {common.median(prefix, f'{name}_cached_tokens'):.0f}")
