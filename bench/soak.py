"""The soak of tests/faults at full size: 1,000 mixed requests at concurrency 16, checked one by one, with the
daemon's resident memory after each hundred (growth from the first hundred to the last must stay under 5%).

    .venv/bin/python bench/soak.py [--requests 1000] [--concurrency 16] [--model tests/fixtures/parity/llama]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "faults")]

from daemon_process import FIXTURES, start_daemon  # noqa: E402
from soak import check, plan, references, soak  # noqa: E402


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--model", type=Path, default=FIXTURES / "parity" / "llama")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    daemon = start_daemon(args.model, "--max-queue", str(args.concurrency * 2))
    specs = plan(args.requests, args.seed)
    expected = references(daemon.addr, specs)
    rss, failures, outcomes = [], [], []
    started = time.monotonic()
    for first in range(0, len(specs), 100):
        batch = soak(daemon.addr, specs[first:first + 100], args.concurrency)
        outcomes += batch
        for outcome in batch:
            try:
                check(outcome, expected)
            except AssertionError as error:
                failures.append(str(error))
        rss.append(resident_bytes(daemon.proc.pid))
    elapsed = time.monotonic() - started
    code = daemon.stop()
    ends = collections.Counter((o.spec.kind, o.final and o.final.finish_reason, o.code and o.code.name)
                               for o in outcomes)
    for (kind, finish, status), count in sorted(ends.items(), key=str):
        print(f"{kind:14} final={finish!s:5} status={status!s:18} {count:6}")
    growth = (rss[-1] - rss[0]) / rss[0] if len(rss) > 1 else 0.0
    print(f"{len(outcomes)} requests at concurrency {args.concurrency} in {elapsed:.1f} s; slowest "
          f"{max(o.seconds for o in outcomes):.2f} s; failures {len(failures)}; daemon exit code {code}")
    print("resident MiB after each hundred: " + " ".join(f"{r / 2**20:.0f}" for r in rss)
          + f" (growth first→last {growth:+.1%})")
    for failure in failures[:10]:
        print("FAIL", failure)
    return 0 if not failures and code == 0 and growth < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
