"""Time to first token for a long shared prefix, cold against cached: a request with a new prefix, then
another with the same prefix and a different question, through `mlxd serve` over gRPC.

    python bench/prefix_ttft.py --model PATH [--prefix-tokens 2000 --rounds 3] [--answer-tokens 256]

Each round uses a prefix never seen before, so its first request is cold. With --answer-tokens, each round also
plays a chat's next turn: the first request generates that many tokens, then a request resends prefix,
question and that answer plus a new question (the answer's KV comes from the cache), against one that sends
as many other tokens in the answer's place (only the prefix can come from the cache). Prints a table last.
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


def ttft(client: Client, ids: list[int], max_tokens: int = 4) -> tuple[float, int, list[int]]:
    """(time to the first token, cached prompt tokens, the generated tokens)."""
    start = time.perf_counter()
    first, cached, tokens = 0.0, 0, []
    for response in client.generate(tokens=ids, temperature=0.0, max_tokens=max_tokens, ignore_eos=True):
        if response.HasField("chunk"):
            first = first or time.perf_counter() - start
            tokens += response.chunk.token_ids
        if response.HasField("final"):
            cached = response.final.usage.cached_tokens
    return first, cached, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=0, help="also time a chat's next turn (see above)")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="mlxd-bench-")))
    args = parser.parse_args()
    daemon = start_daemon(args.model, "--dtype", args.dtype, "--log-level", "INFO", workdir=args.log_dir)
    cold, warm, turn, other = [], [], [], []
    try:
        with Client(daemon.addr) as client:
            vocab = client.model_info().vocab_size
            ttft(client, [5] * 64)  # warm-up
            for r in range(args.rounds):
                prefix = [(r * 7919 + 31 * i) % (vocab - 10) + 5 for i in range(args.prefix_tokens)]
                t_cold, c_cold, answer = ttft(client, prefix + [11, 12, 13, 14], max(4, args.answer_tokens))
                t_warm, c_warm, _ = ttft(client, prefix + [21, 22, 23, 24])
                print(f"round {r}: cold {t_cold * 1e3:.1f} ms ({c_cold} cached), "
                      f"cached {t_warm * 1e3:.1f} ms ({c_warm} cached)", flush=True)
                cold.append(t_cold)
                warm.append(t_warm)
                if args.answer_tokens:
                    question = [31, 32, 33, 34]
                    t_other, c_other, _ = ttft(client, prefix + [11, 12, 13, 14] + [(t + 1) % vocab for t in answer]
                                               + question)
                    t_turn, c_turn, _ = ttft(client, prefix + [11, 12, 13, 14] + answer + question)
                    print(f"round {r}: next turn {t_turn * 1e3:.1f} ms ({c_turn} cached), with another answer "
                          f"{t_other * 1e3:.1f} ms ({c_other} cached)", flush=True)
                    turn.append(t_turn)
                    other.append(t_other)
    finally:
        daemon.stop()
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"model {args.model}, {args.prefix_tokens}-token shared prefix, median of {args.rounds} rounds")
    print(f"{'cold TTFT ms':>13} {'cached TTFT ms':>15} {'cached / cold':>14}")
    print(f"{c * 1e3:13.1f} {w * 1e3:15.1f} {w / c:14.3f}")
    if args.answer_tokens:
        t, o = statistics.median(turn), statistics.median(other)
        print(f"next turn after a {args.answer_tokens}-token answer: {t * 1e3:.1f} ms with the answer cached, "
              f"{o * 1e3:.1f} ms with another answer in its place ({t / o:.3f})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
