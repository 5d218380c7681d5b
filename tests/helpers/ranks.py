"""Starting N processes that form one mx.distributed group over the TCP ring on loopback (MLX's ring backend:
MLX_RANK and a hostfile of each rank's address), as tensor-parallel tests need."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_ports(n: int) -> list[int]:
    """`n` ports free on loopback now (bound and released: a race with other processes is possible, not likely)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_hostfile(path: Path, ranks: int) -> Path:
    """A ring hostfile: one loopback address per rank."""
    path.write_text(json.dumps([[f"127.0.0.1:{port}"] for port in free_ports(ranks)]))
    return path


def run_ranks(module: str, args: list[str], ranks: int, workdir: Path, timeout: float = 120) -> list[str]:
    """Run `python -m module *args` as ranks 0..ranks-1 of one ring group; their stdouts, in rank order. Raises
    AssertionError with every rank's stderr if one fails or they outlast `timeout`."""
    hostfile = write_hostfile(workdir / "hostfile.json", ranks)
    procs = []
    for rank in range(ranks):
        env = os.environ | {"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
        procs.append(subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(code != 0 for code, _, _ in outputs):
        report = "\n".join(f"rank {r}: exit {code}\n{err[-3000:]}" for r, (code, _, err) in enumerate(outputs))
        raise AssertionError(f"a rank failed:\n{report}")
    return [out for _, out, _ in outputs]
