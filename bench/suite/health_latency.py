"""Health under load: how fast grpc.health.v1 Check answers while the worker is saturated with generations.

    python -m bench health_latency [--model PATH] [--streams 8] [--checks 2000]

Health answers from state the worker publishes (DESIGN.md §1), so its latency should not depend on the load.
Prints p50/p99/max of Check with the worker idle (the anchor) and saturated, and their ratio.
"""

from __future__ import annotations

import statistics
import threading
import time

from bench import common
from bench.daemon import Daemon
from mlxd_client import Client, collect

# The tests' tiny Llama (random weights, 320-token vocabulary): the worker's load, not the model, is the point.
TINY = common.ROOT / "tests" / "fixtures" / "parity" / "llama"


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


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    common.add_model_args(parser, default=str(TINY))
    parser.add_argument("--streams", type=int, default=8, help="concurrent generations that keep the worker busy")
    parser.add_argument("--checks", type=int, default=2000)
    common.add_out_arg(parser, "health_latency")
    args = parser.parse_args(argv)
    model = common.resolve_model(args.model)
    with Daemon(model, args.out, "--dtype", args.dtype, "--max-queue", str(args.streams * 2)) as daemon:
        idle = check_latencies(daemon.addr, args.checks)
        stop = threading.Event()
        generated = []

        def keep_busy() -> None:
            with Client(daemon.addr) as client:
                while not stop.is_set():
                    result = collect(client.generate(tokens=[5] * 64, max_tokens=256, ignore_eos=True,
                                                     temperature=0.0, timeout=120))
                    assert result.final is not None, "a stream ended without its final"
                    generated.append(result.final.usage.completion_tokens)

        workers = [threading.Thread(target=keep_busy) for _ in range(args.streams)]
        for w in workers:
            w.start()
        time.sleep(1.0)  # let the queue fill
        busy = check_latencies(daemon.addr, args.checks)
        stop.set()
        for w in workers:
            w.join()
        # Health must not have cost the daemon anything: it drains and exits cleanly.
        assert daemon.stop() == 0, f"mlxd exited with an error; see {daemon.log}"
    idle_row, busy_row = summary(idle), summary(busy)
    print(f"\n{model.name}; {args.checks} Checks each; {args.streams} streams kept the worker busy "
          f"({sum(generated)} tokens generated meanwhile)")
    print(common.table(["worker", "p50 ms", "p99 ms", "max ms"], [["idle", *idle_row], ["saturated", *busy_row]]))
    print(f"saturated / idle p99: {busy_row[1] / idle_row[1]:.2f}")
