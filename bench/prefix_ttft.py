"""Time to first token for a long shared prefix, cold against cached: a request with a new prefix, then
another with the same prefix and a different question, through `mlxd serve` over gRPC.

    python bench/prefix_ttft.py --model PATH [--prefix-tokens 2000 --rounds 3]

Each round uses a prefix never seen before, so its first request is cold. Prints a table last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from daemon_process import start_daemon  # noqa: E402
from mlxd_client import Client  # noqa: E402


def ttft(client: Client, ids: list[int]) -> tuple[float, int]:
    start = time.perf_counter()
    first, cached = 0.0, 0
    for response in client.generate(tokens=ids, temperature=0.0, max_tokens=4, ignore_eos=True):
        if response.HasField("chunk") and not first:
            first = time.perf_counter() - start
        if response.HasField("final"):
            cached = response.final.usage.cached_tokens
    return first, cached


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="mlxd-bench-")))
    args = parser.parse_args()
    daemon = start_daemon(args.model, "--dtype", args.dtype, "--log-level", "INFO", workdir=args.log_dir)
    cold, warm = [], []
    try:
        with Client(daemon.addr) as client:
            vocab = client.model_info().vocab_size
            ttft(client, [5] * 64)  # warm-up
            for r in range(args.rounds):
                prefix = [(r * 7919 + 31 * i) % (vocab - 10) + 5 for i in range(args.prefix_tokens)]
                t_cold, c_cold = ttft(client, prefix + [11, 12, 13, 14])
                t_warm, c_warm = ttft(client, prefix + [21, 22, 23, 24])
                print(f"round {r}: cold {t_cold * 1e3:.1f} ms ({c_cold} cached), "
                      f"cached {t_warm * 1e3:.1f} ms ({c_warm} cached)", flush=True)
                cold.append(t_cold)
                warm.append(t_warm)
    finally:
        daemon.stop()
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"model {args.model}, {args.prefix_tokens}-token shared prefix, median of {args.rounds} rounds")
    print(f"{'cold TTFT ms':>13} {'cached TTFT ms':>15} {'cached / cold':>14}")
    print(f"{c * 1e3:13.1f} {w * 1e3:15.1f} {w / c:14.3f}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
