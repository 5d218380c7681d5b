"""The soak of tests/faults at full size: 1,000 mixed requests at concurrency 16, checked one by one, with the
daemon's memory after each hundred: resident set, MLX active memory (GetModelInfo), the prefix cache's share of
it, and resident + MLX active, which must grow less than 5% from the first hundred to the last (issue 7). A
warm-up hundred runs first, unmeasured, so that the prefix cache (small here: it keeps snapshots up to its budget
by design) is full before the first sample.

    .venv/bin/python -m tests.stress.soak [--requests 1000] [--concurrency 16] [--model tests/fixtures/parity/llama]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

from tests.faults.soak import STEADY_MALLOC, check, growth, memory, plan, references, soak
from tests.helpers.daemon_process import FIXTURES, start_daemon


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--model", type=Path, default=FIXTURES / "parity" / "llama")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prefix-cache-mb", type=int, default=1,
                        help="small, so that it fills during the warm-up and then evicts")
    parser.add_argument("--warmup", type=int, default=100, help="requests run before the first sample")
    args = parser.parse_args()
    daemon = start_daemon(args.model, "--max-queue", str(args.concurrency * 2), "--prefix-cache-mb",
                          str(args.prefix_cache_mb), env=STEADY_MALLOC)
    specs = plan(args.requests, args.seed)
    expected = references(daemon.addr, specs)
    soak(daemon.addr, plan(args.warmup, args.seed + 1), args.concurrency)
    samples, failures, outcomes = [], [], []
    started = time.monotonic()
    for first in range(0, len(specs), 100):
        batch = soak(daemon.addr, specs[first:first + 100], args.concurrency)
        outcomes += batch
        for outcome in batch:
            try:
                check(outcome, expected)
            except AssertionError as error:
                failures.append(str(error))
        samples.append(memory(daemon.addr, daemon.proc.pid))
    elapsed = time.monotonic() - started
    code = daemon.stop()
    ends = collections.Counter((o.spec.kind, o.final and o.final.finish_reason, o.code and o.code.name)
                               for o in outcomes)
    for (kind, finish, status), count in sorted(ends.items(), key=str):
        print(f"{kind:14} final={finish!s:5} status={status!s:18} {count:6}")
    grew = growth(samples)
    print(f"{len(outcomes)} requests at concurrency {args.concurrency} in {elapsed:.1f} s; slowest "
          f"{max(o.seconds for o in outcomes):.2f} s; failures {len(failures)}; daemon exit code {code}")
    for failure in failures[:10]:
        print("FAIL", failure)
    print("MiB after each hundred (idle):")
    for name, value in (("resident", lambda m: m.resident_bytes), ("MLX active", lambda m: m.mlx_active_bytes),
                        ("  prefix cache", lambda m: m.prefix_cache_bytes), ("  the rest", lambda m: m.engine),
                        ("MLX allocator cache", lambda m: m.mlx_cache_bytes),
                        ("resident + MLX active", lambda m: m.combined)):
        print(f"  {name:22}" + " ".join(f"{value(m) / 2**20:8.2f}" for m in samples))
    print("growth first→last hundred: " + ", ".join(f"{name} {g:+.2%}" for name, g in grew.items()))
    return 0 if not failures and code == 0 and grew["resident+mlx_active"] < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
