"""Aggregate throughput of concurrent streams: N gRPC streams into `mlxd serve` (continuous batching) against
mlx-lm's BatchGenerator in-process on the same weights, for each N, alternating in one command.

    python bench/batch_throughput.py --model PATH [--streams 1,4,16 --prompt-tokens 128 --new-tokens 256 --mlx-lm]

Every stream is greedy with ignore_eos, so both engines generate exactly streams × new-tokens tokens.
"total" counts wall time from the first request to the last token (prefill included); "decode" counts from
the moment every stream has its first token. Prints a table last; logs go to --log-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from daemon_process import daemon_env, start_daemon  # noqa: E402
from mlxd_client import Client  # noqa: E402


def stream_prompts(vocab_size: int, streams: int, length: int, mixed: bool = False) -> list[list[int]]:
    """Distinct prompts (ids well inside the vocabulary) of `length` tokens, or with mixed, of lengths spread
    evenly over [length / 2, 3 * length / 2)."""
    lengths = [length // 2 + (s * length) // max(streams, 1) if mixed else length for s in range(streams)]
    return [[(97 * s + 31 * i) % (vocab_size - 10) + 5 for i in range(n)] for s, n in enumerate(lengths)]


def over_grpc(addr: str, prompts: list[list[int]], new_tokens: int) -> dict:
    firsts: list[float] = []
    counts = [0] * len(prompts)
    lock = threading.Lock()

    def run(i: int) -> None:
        with Client(addr) as client:
            for response in client.generate(tokens=prompts[i], temperature=0.0, ignore_eos=True,
                                            max_tokens=new_tokens):
                if response.HasField("chunk"):
                    if counts[i] == 0:
                        with lock:
                            firsts.append(time.perf_counter())
                    counts[i] += len(response.chunk.token_ids)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.perf_counter()
    return summarize(start, max(firsts), end, sum(counts), len(prompts))


def summarize(start: float, all_started: float, end: float, tokens: int, streams: int) -> dict:
    return {"total_tps": tokens / (end - start),
            "decode_tps": (tokens - streams) / (end - all_started) if end > all_started else 0.0}


def mlx_lm(model: Path, streams: int, args: argparse.Namespace, log_dir: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "mlx_lm_batch_anchor.py"), "--model", str(model),
           "--streams", str(streams), "--prompt-tokens", str(args.prompt_tokens),
           "--new-tokens", str(args.new_tokens)] + (["--mixed"] if args.mixed else [])
    env = dict(daemon_env(), PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), daemon_env()["PYTHONPATH"]]))
    with open(log_dir / "mlx-lm-batch.log", "ab") as err:
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, check=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")][-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--streams", default="1,4,16")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--mixed", action="store_true", help="prompt lengths spread around --prompt-tokens")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds per engine and stream count")
    parser.add_argument("--mlx-lm", action="store_true", help="also run mlx-lm's BatchGenerator (must be installed)")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="mlxd-bench-")))
    parser.add_argument("--serve-arg", action="append", default=[], help="an extra `mlxd serve` argument (repeat)")
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    counts = [int(n) for n in args.streams.split(",")]

    rows = []
    daemon = start_daemon(args.model, "--dtype", args.dtype, "--log-level", "INFO", "--max-batch-size",
                          str(max(counts)), *args.serve_arg, workdir=args.log_dir)
    try:
        with Client(daemon.addr) as client:
            vocab = client.model_info().vocab_size
        for n in counts:
            prompts = stream_prompts(vocab, n, args.prompt_tokens, args.mixed)
            over_grpc(daemon.addr, prompts, min(args.new_tokens, 16))  # warm-up at this batch size
            for _ in range(args.rounds):
                ours = over_grpc(daemon.addr, prompts, args.new_tokens)
                anchor = mlx_lm(args.model, n, args, args.log_dir) if args.mlx_lm else None
                rows.append((n, ours, anchor))
                print(json.dumps({"streams": n, "mlxd": ours, "mlx_lm": anchor}), flush=True)
    finally:
        daemon.stop()

    print(f"model {args.model}, prompt {args.prompt_tokens}{' (mixed lengths)' if args.mixed else ''}, "
          f"{args.new_tokens} new tokens per stream, best of {args.rounds} rounds (and the median of per-round ratios); "
          f"logs in {args.log_dir}")
    print(f"{'streams':>7} {'mlxd total':>11} {'mlxd decode':>12} {'mlx-lm total':>13} {'mlx-lm decode':>14} "
          f"{'ratio total':>12} {'ratio decode':>13} {'median of round ratios':>23}")
    for n in counts:
        mine = [r for r in rows if r[0] == n]
        best = max(mine, key=lambda r: r[1]["total_tps"])
        line = f"{n:7d} {best[1]['total_tps']:11.1f} {best[1]['decode_tps']:12.1f}"
        if args.mlx_lm:
            anchor = max((r[2] for r in mine), key=lambda a: a["total_tps"])
            line += (f" {anchor['total_tps']:13.1f} {anchor['decode_tps']:14.1f}"
                     f" {best[1]['total_tps'] / anchor['total_tps']:12.3f}"
                     f" {best[1]['decode_tps'] / anchor['decode_tps']:13.3f}"
                     f" {_median_ratio(mine, 'total_tps'):>11.3f} / {_median_ratio(mine, 'decode_tps'):.3f}")
        print(line)


def _median_ratio(rows: list, key: str) -> float:
    """The median over rounds of mlxd / mlx-lm within a round: adjacent runs share the machine's mood, so on a
    noisy host this is steadier than the ratio of the two best rounds."""
    return statistics.median(ours[key] / anchor[key] for _, ours, anchor in rows)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
