"""Start `mlxd serve` as a real child process, the way a parent would, for the service and process tests."""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    # The repository root too: a test entry point (tests.helpers.fault_daemon) runs as a module of it.
    paths = [str(ROOT / "daemon"), str(ROOT / "clients" / "python"), str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else paths)
    return env


@dataclass
class Daemon:
    proc: subprocess.Popen
    addr: str
    ready: dict
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def resident_bytes(pid: int) -> int:
    """A process's resident set (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


def read_ready_line(proc: subprocess.Popen, timeout: float) -> dict:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sel.select(remaining):
            raise TimeoutError("no ready line from mlxd")
        byte = proc.stdout.read1(1) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
        if not byte:
            raise RuntimeError(f"mlxd exited with {proc.wait()} before it was ready")
        line += byte
    return json.loads(line)


def start_daemon(model: Path, *extra: str, addr: str | None = None, timeout: float = 120.0,
                 workdir: Path | None = None, env: dict[str, str] | None = None,
                 open_files: int | None = None, faults: tuple[str, ...] = ()) -> Daemon:
    """env: extra environment variables for the daemon; open_files: its soft limit on open files at start (as a
    parent with the common default of 1,024 would leave it); faults: serve a faulty model through
    tests.helpers.fault_daemon with these of its flags (e.g. ("--fail-on-token", "300"))."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="mlxd-test-"))
    addr = addr or f"unix:{workdir / 'mlxd.sock'}"
    stderr_path = workdir / "stderr.log"
    def limit_open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    limit = None if open_files is None else limit_open_files
    program = ["-m", "tests.helpers.fault_daemon", *faults] if faults else ["-m", "mlxd"]
    proc = subprocess.Popen([sys.executable, *program, "serve", "--model", str(model), "--addr", addr, *extra],
                            stdout=subprocess.PIPE, stderr=open(stderr_path, "wb"), stdin=subprocess.DEVNULL,
                            env=dict(daemon_env(), **(env or {})), preexec_fn=limit)
    try:
        ready = read_ready_line(proc, timeout)
    except Exception as error:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"mlxd did not start; stderr:\n{stderr_path.read_text(errors='replace')}") from error
    return Daemon(proc, ready["addr"], ready, stderr_path)


def daemon_of_a_killed_parent(model: Path, workdir: Path) -> tuple[int, float]:
    """Start a parent process that starts the daemon and waits; SIGKILL the parent. The daemon's pid, and when the
    parent was killed (time.monotonic), for a test of how soon the orphan exits."""
    parent_code = (
        "import time\n"
        "from pathlib import Path\n"
        "from tests.helpers.daemon_process import start_daemon\n"
        f"d = start_daemon(Path({str(model)!r}), workdir=Path({str(workdir)!r}))\n"
        "print(d.proc.pid, flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
                              env=daemon_env())
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.kill()
    killed = time.monotonic()
    parent.wait()
    return pid, killed


def running(pid: int) -> bool:
    """Alive and not a zombie: an orphan's zombie lingers until its new parent (often PID 1) reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
