"""`mlxd serve` as a benchmark starts it: a child process, ready when its one JSON line arrives on stdout.

Its own code rather than tests/daemon_process.py: the benchmarks run from a checkout or a bench venv where
tests/ is not importable, and they need less (no test hooks, a context manager, logs kept in --out).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from bench.common import child_env


class Daemon:
    """with Daemon(model, out, "--max-batch-size", "16") as daemon: ... daemon.addr ... (stopped with SIGTERM)."""

    def __init__(self, model: Path, out: Path, *serve_args: str, env: dict[str, str] | None = None,
                 timeout: float = 600.0) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.log = out / "mlxd.log"
        cmd = [sys.executable, "-m", "mlxd", "serve", "--model", str(model), "--addr", f"unix:{out / 'mlxd.sock'}",
               "--log-level", "INFO", *serve_args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                         env=child_env(**(env or {})))
        self.ready = self._ready_line(timeout)
        self.addr: str = self.ready["addr"]

    def _ready_line(self, timeout: float) -> dict:
        # readline blocks; a thread lets a daemon that hangs while loading fail the benchmark instead.
        lines: list[bytes] = []
        stdout = self.proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not lines or not lines[0]:
            self.proc.kill()
            self.proc.wait()
            tail = self.log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError("mlxd did not become ready; last lines of its log:\n" + "\n".join(tail))
        return json.loads(lines[0])

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
