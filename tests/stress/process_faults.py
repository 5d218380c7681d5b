"""How fast clients learn that the daemon died, and how fast an orphaned daemon exits (issue 7 asks for
UNAVAILABLE within 1 s of a SIGKILL mid-stream, and exit within 2 s of the parent's SIGKILL). The tests check
the outcomes with generous timeouts; this script times them over many trials:

- python: the Python client streams, the daemon gets SIGKILL; time to the client's UNAVAILABLE.
- go: the generated Go stubs stream (clients/go/cmd/mlxd-stream-probe --addr); time to its UNAVAILABLE.
- go runner: package runner started the daemon and streams (mlxd-stream-probe --model); time to its error.
- parent: a parent process that spawned the daemon gets SIGKILL; time until the daemon has exited.

    .venv/bin/python -m tests.stress.process_faults [--trials 20] [--transports unix,tcp] [--model ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlxd_client import Client, MlxdClientError
from tests.helpers.daemon_process import FIXTURES, ROOT, daemon_env, daemon_of_a_killed_parent, running, start_daemon

PROBE_TIMEOUT = 30.0   # a probe still streaming after this is a hang


def addr_for(transport: str, workdir: Path) -> str:
    return f"unix:{workdir / 'mlxd.sock'}" if transport == "unix" else "127.0.0.1:0"


def python_client(model: Path, transport: str) -> tuple[float, str]:
    workdir = Path(tempfile.mkdtemp(prefix="mlxd-faults-"))
    daemon = start_daemon(model, addr=addr_for(transport, workdir), workdir=workdir)
    with Client(daemon.addr) as client:
        stream = client.generate(tokens=[5] * 4, max_tokens=0, ignore_eos=True, timeout=PROBE_TIMEOUT)
        next(stream)
        daemon.proc.kill()
        killed = time.monotonic()
        try:
            for _ in stream:
                pass
            code = "ended normally"
        except MlxdClientError as error:
            code = error.code.name
        elapsed = time.monotonic() - killed
    daemon.proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    return elapsed, code


def _read_line(proc: subprocess.Popen, expect: str) -> str:
    line = proc.stdout.readline()
    if not line.startswith(expect):
        proc.kill()
        raise RuntimeError(f"probe said {line!r}, expected {expect!r}; stderr: {proc.stderr.read()}")
    return line.strip()


def go_client(probe: Path, model: Path, transport: str) -> tuple[float, str]:
    workdir = Path(tempfile.mkdtemp(prefix="mlxd-faults-"))
    daemon = start_daemon(model, addr=addr_for(transport, workdir), workdir=workdir)
    proc = subprocess.Popen([str(probe), "--addr", daemon.addr], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _read_line(proc, "streaming")
    daemon.proc.kill()
    killed = time.monotonic()
    end = _read_line(proc, "end")
    elapsed = time.monotonic() - killed
    proc.wait(PROBE_TIMEOUT)
    daemon.proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    return elapsed, end.removeprefix("end ")


def go_runner(probe: Path, model: Path) -> tuple[float, str]:
    proc = subprocess.Popen([str(probe), "--model", str(model), "--python", sys.executable], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=daemon_env())
    pid = int(_read_line(proc, "pid").split()[1])
    _read_line(proc, "streaming")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    end = _read_line(proc, "end")
    elapsed = time.monotonic() - killed
    proc.wait(PROBE_TIMEOUT)
    return elapsed, end.removeprefix("end ")


def parent_killed(model: Path) -> tuple[float, str]:
    workdir = Path(tempfile.mkdtemp(prefix="mlxd-faults-"))
    pid, killed = daemon_of_a_killed_parent(model, workdir)
    while running(pid):
        if time.monotonic() - killed > PROBE_TIMEOUT:
            os.kill(pid, signal.SIGKILL)
            return float("inf"), "still running"
        time.sleep(0.002)
    elapsed = time.monotonic() - killed
    shutil.rmtree(workdir, ignore_errors=True)
    return elapsed, "exited"


def build_probe(into: Path) -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    probe = into / "mlxd-stream-probe"
    subprocess.run([go, "build", "-o", str(probe), "./cmd/mlxd-stream-probe"], cwd=ROOT / "clients" / "go",
                   check=True)
    return probe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--transports", default="unix,tcp", help="comma-separated: unix, tcp")
    parser.add_argument("--model", type=Path, default=FIXTURES / "parity" / "llama")
    args = parser.parse_args()
    probe = build_probe(Path(tempfile.mkdtemp(prefix="mlxd-probe-")))
    cases = []
    for transport in args.transports.split(","):
        cases.append((f"SIGKILL → python client ({transport})", "UNAVAILABLE", 1.0,
                      lambda t=transport: python_client(args.model, t)))
        cases.append((f"SIGKILL → go client ({transport})", "Unavailable", 1.0,
                      lambda t=transport: go_client(probe, args.model, t)))
    cases.append(("SIGKILL → go runner (unix)", "Unavailable exit", 1.0, lambda: go_runner(probe, args.model)))
    cases.append(("parent SIGKILL → daemon exit", "exited", 2.0, lambda: parent_killed(args.model)))
    rows, ok = [], True
    for name, want, limit, trial in cases:
        times, outcomes = [], set()
        for _ in range(args.trials):
            elapsed, outcome = trial()
            times.append(elapsed)
            outcomes.add(outcome)
        good = outcomes == {want}
        ok = ok and good and max(times) < limit
        rows.append((name, times, outcomes, limit))
        print(f"{name}: {', '.join(sorted(outcomes))}; max {max(times) * 1000:.0f} ms", flush=True)
    print(f"\n{args.trials} trials each, milliseconds")
    print(f"{'case':36} {'median':>8} {'p95':>8} {'max':>8} {'limit':>6}  outcome")
    for name, times, outcomes, limit in rows:
        p95 = statistics.quantiles(times, n=20, method="inclusive")[18] if len(times) > 1 else times[0]
        print(f"{name:36} {statistics.median(times) * 1000:8.1f} {p95 * 1000:8.1f} {max(times) * 1000:8.1f} "
              f"{limit * 1000:6.0f}  {', '.join(sorted(outcomes))}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
