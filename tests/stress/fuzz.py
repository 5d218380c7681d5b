"""The fuzz property of tests/fuzz at full size: many hostile requests against one daemon, with a table of the
status codes they got. Fails (exit 1) on the first request answered outside the documented codes.

    .venv/bin/python -m tests.stress.fuzz --examples 10000 [--model tests/fixtures/parity/llama] [--serve-arg=...]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import grpc
from hypothesis import HealthCheck, given, settings

from mlxd_client import Client
from tests.fuzz.hostile_requests import any_call
from tests.fuzz.sending import run
from tests.helpers.daemon_process import FIXTURES, start_daemon


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--model", type=Path, default=FIXTURES / "parity" / "llama")
    parser.add_argument("--progress", type=int, default=500, help="a line on stderr every this many requests")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="one more `mlxd serve` argument (repeatable), e.g. --serve-arg=--log-requests")
    args = parser.parse_args()
    daemon = start_daemon(args.model, "--max-message-mb", "1", "--max-queue", "4", *args.serve_arg)
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    channel = grpc.insecure_channel(daemon.addr)
    started = time.monotonic()

    @settings(max_examples=args.examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(call=any_call())
    def fuzz(call):
        code = run(channel, call)
        outcomes[(call.method.rsplit("/", 1)[1], code.name if code else "cancelled by the client")] += 1
        with Client(daemon.addr) as client:
            assert client.health(timeout=5) == "SERVING"
        total = sum(outcomes.values())
        if total % args.progress == 0:
            print(f"{total} requests in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    try:
        fuzz()
    finally:
        elapsed = time.monotonic() - started
        channel.close()
        code = daemon.stop()
        for (method, status), count in sorted(outcomes.items()):
            print(f"{method:20} {status:28} {count:6}")
        total = sum(outcomes.values())
        print(f"{total} requests in {elapsed:.0f} s ({total / max(elapsed, 1e-9):.0f}/s); daemon exit code {code}")
        tracebacks = daemon.stderr().count("Traceback")
        print(f"tracebacks in the daemon log: {tracebacks}")
    return 0 if code == 0 and tracebacks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
