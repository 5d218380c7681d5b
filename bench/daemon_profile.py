"""Where the daemon's threads spend a streaming generation: py-spy samples `mlxd serve` (every thread, idle
ones included) while one or more greedy streams run over gRPC, and prints the top stack leaves per thread.

    python bench/daemon_profile.py --model PATH [--streams 1 --new-tokens 3000 --seconds 4 --py-spy PATH]

py-spy must be installed (the bench venv has it). The raw samples stay in --out for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from daemon_process import start_daemon  # noqa: E402
from mlxd_client import Client  # noqa: E402


def stream(addr: str, new_tokens: int, counts: list[int], i: int) -> None:
    with Client(addr) as client:
        for response in client.generate(tokens=[5 + (7 * i + j) % 1000 for j in range(64)], temperature=0.0,
                                        ignore_eos=True, max_tokens=new_tokens):
            if response.HasField("chunk"):
                counts[i] += len(response.chunk.token_ids)


def summarize(raw: Path, top: int) -> str:
    """raw: py-spy's collapsed stacks ("thread (id);frame;frame count"), leaves per thread."""
    per_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        leaf = ";".join(f.split(" (")[0] for f in frames[-2:])
        per_thread[frames[0]][leaf] += int(count)
    lines = []
    for thread, leaves in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(leaves.values())
        lines.append(f"{thread}: {total} samples")
        lines += [f"  {100 * n / total:5.1f}%  {leaf}" for leaf, n in leaves.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--py-spy", default="py-spy")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="mlxd-profile-")))
    parser.add_argument("serve_args", nargs="*", help="extra `mlxd serve` arguments")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    daemon = start_daemon(args.model, "--max-batch-size", str(max(args.streams, 1)), *args.serve_args,
                          workdir=args.out)
    counts = [0] * args.streams
    try:
        threads = [threading.Thread(target=stream, args=(daemon.addr, args.new_tokens, counts, i))
                   for i in range(args.streams)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        raw = args.out / "samples.txt"
        before, start = sum(counts), time.perf_counter()
        subprocess.run([args.py_spy, "record", "-p", str(daemon.proc.pid), "-d", str(int(args.seconds)),
                        "-r", "1000", "--threads", "--idle", "--nonblocking", "-f", "raw", "-o", str(raw)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rate = (sum(counts) - before) / (time.perf_counter() - start)
        for t in threads:
            t.join()
    finally:
        daemon.stop()
    print(summarize(raw, args.top))
    print(f"{args.streams} stream(s), {rate:.1f} tok/s while sampled; samples in {raw}")


if __name__ == "__main__":
    main()
