"""Health under load: how fast grpc.health.v1 Check answers while the worker is saturated with generations.

    .venv/bin/python bench/health_latency.py [--model PATH] [--streams 8] [--checks 2000]

Health answers from state the worker publishes (DESIGN.md §1), so its latency should not depend on the load.
Prints p50/p99/max of Check with the worker idle (the anchor) and saturated, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from daemon_process import FIXTURES, start_daemon  # noqa: E402
from mlxd_client import Client, collect  # noqa: E402


def check_latencies(addr: str, count: int) -> list[float]:
    """Seconds per Check, one after another on one channel (as a probe would poll)."""
    out = []
    with Client(addr) as client:
        client.health()
        for _ in range(count):
            start = time.perf_counter()
            status = client.health(timeout=5.0)
            out.append(time.perf_counter() - start)
            assert status == "SERVING", status
    return out


def summary(latencies: list[float]) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    return (statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99) - 1] * 1e3, ordered[-1] * 1e3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=FIXTURES / "parity" / "llama")
    parser.add_argument("--streams", type=int, default=8, help="concurrent generations that keep the worker busy")
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()
    daemon = start_daemon(args.model, "--max-queue", str(args.streams * 2))
    try:
        idle = check_latencies(daemon.addr, args.checks)
        stop = threading.Event()
        generated = []

        def keep_busy() -> None:
            with Client(daemon.addr) as client:
                while not stop.is_set():
                    result = collect(client.generate(tokens=[5] * 64, max_tokens=256, ignore_eos=True,
                                                     temperature=0.0, timeout=120))
                    generated.append(result.final.usage.completion_tokens)

        workers = [threading.Thread(target=keep_busy) for _ in range(args.streams)]
        for w in workers:
            w.start()
        time.sleep(1.0)  # let the queue fill
        busy = check_latencies(daemon.addr, args.checks)
        stop.set()
        for w in workers:
            w.join()
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    (i50, i99, imax), (b50, b99, bmax) = summary(idle), summary(busy)
    print(f"model {args.model}; {args.checks} Checks each; {args.streams} streams kept the worker busy "
          f"({sum(generated)} tokens generated meanwhile)")
    print(f"{'worker':10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'idle':10} {i50:8.2f} {i99:8.2f} {imax:8.2f}")
    print(f"{'saturated':10} {b50:8.2f} {b99:8.2f} {bmax:8.2f}")
    print(f"saturated / idle p99: {b99 / i99:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
