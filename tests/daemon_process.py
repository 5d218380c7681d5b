"""Start `mlxd serve` as a real child process, the way a parent would, for the service and process tests."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "daemon"), str(ROOT / "clients" / "python")]
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
                 workdir: Path | None = None, env: dict[str, str] | None = None) -> Daemon:
    """env: extra environment variables (test hooks) for the daemon."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="mlxd-test-"))
    addr = addr or f"unix:{workdir / 'mlxd.sock'}"
    stderr_path = workdir / "stderr.log"
    proc = subprocess.Popen([sys.executable, "-m", "mlxd", "serve", "--model", str(model), "--addr", addr, *extra],
                            stdout=subprocess.PIPE, stderr=open(stderr_path, "wb"), stdin=subprocess.DEVNULL,
                            env=dict(daemon_env(), **(env or {})))
    try:
        ready = read_ready_line(proc, timeout)
    except Exception:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"mlxd did not start; stderr:\n{stderr_path.read_text(errors='replace')}")
    return Daemon(proc, ready["addr"], ready, stderr_path)
