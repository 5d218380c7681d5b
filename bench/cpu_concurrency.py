"""mlxd under concurrent gRPC streams, and time to first token with a shared 2,000-token prefix, cold vs repeated.
Measures whatever batching and prefix caching the daemon on this checkout does.

    nice -n 5 .bench-venv/bin/python bench/cpu_concurrency.py --out /tmp/cpu-concurrency [--model smollm2]

Aggregate tok/s: C streams started together (distinct prompts, greedy, ignore_eos), all completion tokens over
the wall time from the first request to the last final message; the stream counts alternate each round.
Shared prefix: per round a new prefix P; TTFT of P+a (cold), then P+b (shares P) and P+a again (identical);
max_tokens 1. Ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from cpu_anchors import model_gguf  # noqa: E402
from cpu_engines import prompt_ids  # noqa: E402
from daemon_process import start_daemon  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from mlxd_client import Client  # noqa: E402


def stream(client: Client, prompt: list[int], new_tokens: int) -> dict:
    start = time.perf_counter()
    first, count, final = None, 0, None
    for response in client.generate(tokens=prompt, temperature=0.0, ignore_eos=True, max_tokens=new_tokens):
        if response.HasField("chunk"):
            if first is None and response.chunk.token_ids:
                first = time.perf_counter()
            count += len(response.chunk.token_ids)
        else:
            final = response.final
    return {"start": start, "first": first, "end": time.perf_counter(), "tokens": count,
            "cached_tokens": final.usage.cached_tokens, "server_ttft_s": final.timings.time_to_first_token_seconds}


def concurrent(client: Client, vocab: int, streams: int, salt: int, args: argparse.Namespace) -> dict:
    prompts = [prompt_ids(vocab, args.prompt_tokens, salt=salt + i) for i in range(streams)]
    with ThreadPoolExecutor(streams) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda p: stream(client, p, args.new_tokens), prompts))
    wall = max(r["end"] for r in results) - t0
    per_stream = [(r["tokens"] - 1) / (r["end"] - r["first"]) for r in results]
    return {"streams": streams, "aggregate_tps": sum(r["tokens"] for r in results) / wall,
            "median_stream_decode_tps": statistics.median(per_stream),
            "median_ttft_s": statistics.median(r["first"] - r["start"] for r in results)}


def shared_prefix(client: Client, vocab: int, salt: int, args: argparse.Namespace) -> dict:
    prefix = prompt_ids(vocab, args.prefix_tokens, salt=salt)
    a, b = prompt_ids(vocab, 16, salt=salt + 1), prompt_ids(vocab, 16, salt=salt + 2)
    runs = {name: stream(client, prefix + suffix, 1) for name, suffix in (("cold", a), ("shared", b), ("same", a))}
    return {f"{name}_{key}": (r["first"] - r["start"]) if key == "ttft_s" else r[key]
            for name, r in runs.items() for key in ("ttft_s", "cached_tokens", "server_ttft_s")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2", help="smollm2, llama-0.4b or a GGUF path")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="OPENBLAS_NUM_THREADS for the daemon")
    parser.add_argument("--mlxd-arg", action="append", default=[], help="extra `mlxd serve` argument (repeat)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mlxd-cpu-concurrency"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = model_gguf(args.model, args.out)
    vocab = len(GGUFReader(gguf).fields["tokenizer.ggml.tokens"].data)
    daemon = start_daemon(gguf, "--log-level", "INFO", *args.mlxd_arg, workdir=args.out, timeout=600,
                          env={"OPENBLAS_NUM_THREADS": str(args.threads)})
    conc, prefix = [], []
    try:
        with Client(daemon.addr) as client, open(args.out / "runs.jsonl", "a") as log:
            order = list(args.streams)
            for round_ in range(args.rounds + 1):  # round 0 warms up and is not reported
                for n in order:
                    row = {"round": round_, **concurrent(client, vocab, n, 100_000 * round_ + 1000 * n, args)}
                    log.write(json.dumps(row) + "\n")
                    print(row, file=sys.stderr)
                    if round_:
                        conc.append(row)
                order = order[1:] + order[:1]
                row = {"round": round_, **shared_prefix(client, vocab, 7_000_000 + 10 * round_, args)}
                log.write(json.dumps(row) + "\n")
                print(row, file=sys.stderr)
                if round_:
                    prefix.append(row)
    finally:
        daemon.stop()
    print(f"\nmlxd, {args.model}, threads {args.threads}, prompts of {args.prompt_tokens} tokens, {args.new_tokens} new "
          f"tokens per stream, medians of {args.rounds} rounds; logs in {args.out}")
    print(f"{'streams':>8} {'aggregate tok/s':>16} {'per-stream decode tok/s':>24} {'TTFT s':>8} {'vs 1 stream':>12}")
    one = {r["round"]: r["aggregate_tps"] for r in conc if r["streams"] == args.streams[0]}
    for n in args.streams:
        rows = [r for r in conc if r["streams"] == n]
        print(f"{n:8} {statistics.median(r['aggregate_tps'] for r in rows):16.1f} "
              f"{statistics.median(r['median_stream_decode_tps'] for r in rows):24.1f} "
              f"{statistics.median(r['median_ttft_s'] for r in rows):8.2f} "
              f"{statistics.median(r['aggregate_tps'] / one[r['round']] for r in rows):12.2f}")
    cold = statistics.median(r["cold_ttft_s"] for r in prefix)
    print(f"{args.prefix_tokens}-token prefix + 16 tokens, TTFT: cold {cold:.3f} s")
    for name in ("shared", "same"):
        print(f"  {name:6} {statistics.median(r[f'{name}_ttft_s'] for r in prefix):.3f} s, ratio to cold "
              f"{statistics.median(r[f'{name}_ttft_s'] / r['cold_ttft_s'] for r in prefix):.3f}, cached tokens "
              f"{statistics.median(r[f'{name}_cached_tokens'] for r in prefix):.0f}")


if __name__ == "__main__":
    main()
